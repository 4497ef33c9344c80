"""The command line explains itself: every flag has a help line, enumerations list their choices,
bad values are refused by argparse naming the flag, and ``--family`` is the one name of the family."""

from __future__ import annotations

import argparse

import pytest

from pretrain.__main__ import _parser
from pretrain.finetune import recipe
from pretrain.training import config as run_config


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_of_every_command_has_a_help_line():
    missing = [
        f"{name} {action.dest}"
        for name, parser in commands().items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and len(action.help or "") < 8
    ]
    assert not missing
    assert len(commands()) == 15


def help_of(command: str, flag: str) -> str:
    action = next(a for a in commands()[command]._actions if flag in a.option_strings)
    return action.help


def test_settings_state_what_they_are_their_unit_range_and_official_values():
    assert help_of("train", "--ema") == (
        "teacher EMA momentum at step 0, cosine to 1 at max_steps [float; [0, 1]; "
        "official: 0.99 (small), 0.9995 (base), 0.997 (frame-small), 0.9996 (frame-base)]"
    )
    crop = help_of("train", "--crop-seconds")
    assert "[seconds; [0.5, 10]; official: 6 (small, base), 10 (frame-small, frame-base)]" in crop
    assert "official: 0.04]" in help_of("train", "--weight-decay-start")
    assert "official" not in help_of("train", "--seed")  # no official value for what the scripts do not fix
    assert "official: 0.5 (default, fsd50k, spcv2), 1 (as20k), 0.002 (us8k)" in help_of("finetune", "--lr")
    text = commands()["train"].format_help()
    for choices in ("{clip,frame}", "{train,eval}", "{32-true,bf16-mixed,16-mixed,bf16-true,16-true,64-true}"):
        assert choices in text
    assert "{true,false}" in commands()["finetune"].format_help()


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "--ema", "1.5"], "--ema: ema must be in [0, 1], got 1.5"),
        (["train", "--base-lr", "inf"], "--base-lr: base_lr must be finite"),
        (["train", "--base-lr", "0"], "--base-lr: base_lr must be in > 0"),
        (["train", "--batch-size", "0"], "--batch-size: batch_size must be in >= 1"),
        (["train", "--max-steps", "1.5"], "--max-steps: max_steps must be int"),
        (["train", "--freq-scale", "1.5,0.6"], "--freq-scale: freq_scale must be LOW,HIGH with LOW <= HIGH"),
        (["train", "--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
        (["train", "--family", "beats"], "--family/--method: invalid choice: 'beats'"),
        (["train", "--log-data-order", "maybe"], "--log-data-order: log_data_order must be true or false"),
        (["finetune", "--checkpoint", "c", "--task", "t", "--out", "o", "--layer-decay", "0"], "--layer-decay"),
        (["finetune", "--checkpoint", "c", "--task", "t", "--out", "o", "--resume", "latest"], "--resume"),
    ],
)
def test_bad_values_are_refused_by_argparse_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_family_is_the_one_name_and_method_still_works(tmp_path):
    for flag in ("--family", "--method"):
        config = run_config.from_arguments(_parser().parse_args(["train", flag, "frame"]))
        assert (config.family, config.crop_seconds, config.ema) == ("frame", 10.0, 0.997)  # frame-small's
    (tmp_path / "old.yaml").write_text("method: frame\nbase_lr: 5e-4\n")  # PyYAML reads 5e-4 as a string
    argv = ["train", "--preset", "tiny", "--config", str(tmp_path / "old.yaml")]
    config = run_config.from_arguments(_parser().parse_args(argv))
    assert (config.family, config.base_lr) == ("frame", 5e-4)
    assert run_config.PretrainConfig.from_dict({"method": "frame"}).family == "frame"  # hyper-parameters of 0.1 files
    assert "method" not in run_config.PretrainConfig().to_dict()


@pytest.mark.parametrize(
    "text, message",
    [("ema: 2\n", "ema must be in [0, 1], got 2"), ("teacher_mode: student\n", "teacher_mode must be one of"),
     ("batch_size: 8.5\n", "batch_size must be an integer"), ("- 1\n", "must hold a mapping")],
)
def test_yaml_values_are_checked_as_flags_are(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_config.from_arguments(_parser().parse_args(["train", "--config", str(tmp_path / "run.yaml")]))


def test_finetune_settings_come_from_preset_yaml_and_flags(tmp_path):
    (tmp_path / "ft.yaml").write_text("epochs: 20\nrrc: false\n")
    argv = ["finetune", "--checkpoint", "c", "--task", "t", "--out", "o", "--preset", "voxceleb1"]
    config = recipe.from_arguments(_parser().parse_args([*argv, "--config", str(tmp_path / "ft.yaml"), "--lr", "0.2"]))
    assert (config.lr, config.epochs, config.mixup_alpha, config.rrc) == (0.2, 20, 0.0, False)
    with pytest.raises(ValueError, match="warmup_epochs"):
        recipe.from_arguments(_parser().parse_args([*argv, "--epochs", "5"]))
