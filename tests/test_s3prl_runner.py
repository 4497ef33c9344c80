"""s3prl's own downstream runner, through the launcher, on generated KS and SID data (CPU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atst_upstream
from tests.support.s3prl_data import make_speech_commands, make_voxceleb1

STEPS = 24
RUNNER = ["-o"]

pytestmark = pytest.mark.s3prl


def _runner_settings(task: str, data: dict[str, Path], steps: int = STEPS) -> str:
    datarc = "config.downstream_expert.datarc"
    common = [
        f"config.runner.total_steps={steps}",
        f"config.runner.eval_step={steps}",
        f"config.runner.save_step={steps}",
        "config.runner.log_step=8",
        "config.runner.gradient_accumulate_steps=1",
        f"{datarc}.num_workers=0",
    ]
    if task == "speech_commands":
        specific = [
            f"{datarc}.speech_commands_root={data['train']}",
            f"{datarc}.speech_commands_test_root={data['test']}",
            f"{datarc}.batch_size=8",
        ]
    else:
        specific = [
            f"{datarc}.file_path={data['root']}",
            f"{datarc}.meta_data={data['meta']}",
            f"{datarc}.train_batch_size=4",
        ]
    return ",,".join(common + specific)


def train_args(ckpt: Path, task: str, name: str, settings: str, *extra: str) -> list[str]:
    """``-m train`` through the launcher with the atst upstream on a generated dataset."""
    return ["-m", "train", "-u", "atst", "-k", str(ckpt), "-d", task, "-n", name, *extra, "-o", settings]


def run_launcher(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "atst_upstream.run_downstream", *args], cwd=cwd, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def ks_data(tmp_path_factory) -> dict[str, Path]:
    train, test = make_speech_commands(tmp_path_factory.mktemp("ks"))
    return {"train": train, "test": test}


def _data_for(task: str, ks_data, tmp_path: Path) -> dict[str, Path]:
    if task == "speech_commands":
        return ks_data
    root, meta = make_voxceleb1(tmp_path / "vox")  # a new folder each test: exercises the cache check
    return {"root": root, "meta": meta}


@pytest.mark.parametrize("finetune", [False, True], ids=["frozen", "finetuned"])
@pytest.mark.parametrize("task", ["speech_commands", "voxceleb1"])
def test_train_then_evaluate(task, finetune, tiny_ckpt, ks_data, tmp_path):
    data = _data_for(task, ks_data, tmp_path)
    name = f"{task}_{'ft' if finetune else 'frozen'}"
    args = train_args(tiny_ckpt, task, name, _runner_settings(task, data))
    run_launcher(args + (["-f"] if finetune else []), tmp_path)

    expdir = tmp_path / "result" / "downstream" / name
    states = expdir / f"states-{STEPS}.ckpt"
    assert states.is_file() and (expdir / "dev-best.ckpt").is_file()
    log = (expdir / "log.log").read_text()
    assert f"test at step {STEPS}:" in log and f"dev at step {STEPS}:" in log
    assert list(expdir.glob("events.out.tfevents.*"))

    saved = torch.load(states, map_location="cpu", weights_only=False)
    assert "Downstream" in saved and "Featurizer" in saved
    if finetune:
        # with -f the encoder is trained and saved with the downstream model
        original = torch.load(tiny_ckpt, weights_only=True)["state_dict"][
            "model.teacher.encoder.blocks.0.attn.qkv.weight"
        ]
        tuned = saved["Upstream"]["extractor.encoder.blocks.0.attn.qkv.weight"]
        assert not torch.equal(original, tuned)
    else:
        assert "Upstream" not in saved

    result = run_launcher(["-m", "evaluate", "-e", str(states), "-t", "test"], tmp_path)
    accuracy = float(re.findall(r"test acc: ([0-9.]+)", result.stdout + result.stderr)[-1])
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize(
    "upstream,finetune", [("atst", False), ("atst_frame", True)], ids=["atst-frozen", "atst_frame-f"]
)
def test_frame_checkpoint_trains_keyword_spotting(upstream, finetune, tiny_frame_ckpt, ks_data, tmp_path):
    """An ATST-Frame file through the same upstream: -u atst reads the family from the file."""
    name = f"ks_frame_{upstream}"
    args = ["-m", "train", "-u", upstream, "-k", str(tiny_frame_ckpt), "-d", "speech_commands", "-n", name]
    run_launcher(args + (["-f"] if finetune else []) + ["-o", _runner_settings("speech_commands", ks_data)], tmp_path)
    expdir = tmp_path / "result" / "downstream" / name
    log = (expdir / "log.log").read_text()
    assert f"test at step {STEPS}:" in log
    saved = torch.load(expdir / f"states-{STEPS}.ckpt", map_location="cpu", weights_only=False)
    if finetune:  # the Frame encoder (norm_frame, no CLS) was trained and saved with the downstream model
        assert "extractor.encoder.norm_frame.weight" in saved["Upstream"]
        assert "extractor.encoder.cls_token" not in saved["Upstream"]
    else:
        assert "Upstream" not in saved


def test_scene_classes_are_learned_above_chance(tiny_ckpt, ks_data, tmp_path):
    """Frozen tiny encoder + s3prl's linear head separate the four synthetic keywords."""
    args = train_args(tiny_ckpt, "speech_commands", "ks_acc", _runner_settings("speech_commands", ks_data, steps=60))
    run_launcher(args, tmp_path)
    log = (tmp_path / "result" / "downstream" / "ks_acc" / "log.log").read_text()
    test_acc = float(re.findall(r"test at step 60: ([0-9.]+)", log)[-1])
    assert test_acc > 0.5  # 4 keywords: chance is 0.25


def test_layer_selection_flags(tiny_ckpt, ks_data, tmp_path):
    settings = _runner_settings("speech_commands", ks_data)
    args = train_args(tiny_ckpt, "speech_commands", "ks_layer", settings, "-s", "hidden_states", "-l", "2")
    run_launcher(args, tmp_path)
    expdir = tmp_path / "result" / "downstream" / "ks_layer"
    assert "upstream_layer_selection: 2" in next(expdir.glob("args_*.yaml")).read_text()
    featurizer = torch.load(expdir / f"states-{STEPS}.ckpt", map_location="cpu", weights_only=False)["Featurizer"]
    assert "weights" not in featurizer  # one selected layer: no weighted sum over layers
    assert (tmp_path / "result" / "downstream" / "ks_layer" / f"states-{STEPS}.ckpt").is_file()


def test_classic_install_into_an_s3prl_copy(tiny_ckpt, ks_data, tmp_path):
    """The documented classic way: copy the folder to s3prl/upstream/atst and import it in hub.py."""
    import s3prl

    s3prl_copy = tmp_path / "site" / "s3prl"
    shutil.copytree(Path(s3prl.__file__).parent, s3prl_copy, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    shutil.copytree(
        Path(atst_upstream.__file__).parent,
        s3prl_copy / "upstream" / "atst",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with open(s3prl_copy / "hub.py", "a") as hub:
        hub.write("\nfrom s3prl.upstream.atst.hubconf import *\n")
    config = Path(atst_upstream.__file__).parent / "configs" / "speech_commands" / "config.yaml"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), CUDA_VISIBLE_DEVICES="")
    settings = _runner_settings("speech_commands", ks_data)
    args = train_args(tiny_ckpt, "speech_commands", "classic", settings, "-c", str(config), "--device", "cpu")
    result = subprocess.run(
        [sys.executable, "run_downstream.py", *args],
        cwd=s3prl_copy,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # -u atst can only have resolved through the copied hub.py import (no launcher here)
    assert (s3prl_copy / "result" / "downstream" / "classic" / f"states-{STEPS}.ckpt").is_file()
