"""Hostile and broken inputs: small files with big claims end in the package's own error, naming
the problem, within the stated memory budget; a diverging run stops without writing NaN weights.

The files are built in ``tests/support/hostile.py`` as an attacker would (by opcodes, by patching
real files' headers); one subprocess tries them all and measures its peak memory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from pretrain import CheckpointError, load_encoder
from pretrain.model.audio_io import AudioFileError, load_audio
from pretrain.model.limits import LOAD_BUDGET_BYTES
from pretrain.training.synthetic import make_corpus
from pretrain.training.train import TEACHER_EXPORT
from tests.support.hostile import ALL, build_all
from tests.support.pretrain_runs import ENV, train_command

BATTERY_TIMEOUT_S = 300  # a FIFO that blocked, or a claim that was honoured, would run into it


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def battery(hostile_files, tmp_path_factory) -> dict:
    folder = next(iter(hostile_files.values())).parent
    report = tmp_path_factory.mktemp("report") / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.hostile_battery", str(folder), str(report)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=BATTERY_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_hostile_file_is_refused_by_the_packages_error_naming_the_problem(battery, name):
    case = ALL[name]
    outcomes = battery["cases"][name]
    assert [o["call"] for o in outcomes] == list(case.calls)
    for outcome in outcomes:
        assert (outcome["error"], outcome["call"]) == (case.error, outcome["call"]), outcome["message"]
        if case.error is not None:
            assert case.fragment in outcome["message"], outcome["message"]
            assert len(outcome["message"]) < 600, "messages stay small"


def test_no_hostile_file_drives_memory_past_the_budget(battery):
    growth = {f"{name}/{o['call']}": o["peak_growth"] for name, outs in battery["cases"].items() for o in outs}
    worst = max(growth, key=growth.get)
    assert battery["peak_growth"] <= LOAD_BUDGET_BYTES, f"peak grew by {battery['peak_growth']:,} B (worst: {worst})"


def test_a_clip_of_absurd_amplitude_is_refused_not_embedded_as_nan(battery):
    assert battery["loud_clip"]["error"] == "AudioInputError"
    assert "overflows the log-mel front end" in battery["loud_clip"]["message"]


def test_a_scan_counts_hostile_audio_and_goes_on(battery):
    scan = battery["scan"]
    problems = "\n".join(scan["problems"])
    for name in ("wav_declaring_1_hz", "flac_claiming_68_7_g_samples", "not_audio"):
        assert name in problems
    assert scan["readable"] == scan["files"] - len(scan["problems"]) >= 2  # the good file and the long one


def test_the_command_line_names_the_file_and_exits_non_zero(hostile_files, tmp_path):
    real = tmp_path / "tiny.ckpt"
    from pretrain import write_random_checkpoint

    write_random_checkpoint(real, "tiny")
    for command, needle in (
        (["inspect", str(hostile_files["bytearray_claim"])], "bytearray(1700000000) asks for a size"),
        (["embed", str(real), str(hostile_files["wav_declaring_1_hz"])], "declares a sample rate of 1 Hz"),
    ):
        out = subprocess.run([sys.executable, "-m", "pretrain", *command], capture_output=True, text=True, env=ENV)
        assert out.returncode == 2, out.stderr[-2000:]
        assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


# --- the other side: real files near the bounds still load ------------------------------------------
def test_digital_silence_and_low_rates_are_not_mistaken_for_hostile_headers(tmp_path):
    """FLAC codes silence at hundreds of samples per byte, and 8 kHz telephony is a real rate: both read."""
    silence = np.zeros((48000 * 20, 2), dtype=np.float32)
    soundfile.write(tmp_path / "silence.flac", silence, 48000, format="FLAC", subtype="PCM_16")
    assert load_audio(tmp_path / "silence.flac").shape == (16000 * 20,)
    soundfile.write(tmp_path / "phone.wav", np.zeros(8000 * 3, dtype=np.float32) + 0.1, 8000, subtype="ULAW")
    assert load_audio(tmp_path / "phone.wav").shape == (16000 * 3,)


def test_the_duration_budget_is_a_setting(tmp_path, monkeypatch):
    soundfile.write(tmp_path / "long.wav", np.zeros(16000 * 3, dtype=np.float32), 16000)
    monkeypatch.setenv("ATST_MAX_AUDIO_SECONDS", "2.5")
    with pytest.raises(AudioFileError, match="lasts 3.0 s, over the 2.5 s read whole per file"):
        load_audio(tmp_path / "long.wav")
    monkeypatch.setenv("ATST_MAX_AUDIO_SECONDS", "4")
    assert load_audio(tmp_path / "long.wav").shape == (48000,)
    monkeypatch.setenv("ATST_MAX_AUDIO_SECONDS", "inf")
    with pytest.raises(ValueError, match="ATST_MAX_AUDIO_SECONDS must be a positive number"):
        load_audio(tmp_path / "long.wav")


# --- training: a run that diverges stops, names the step, keeps its last good checkpoint ------------
@pytest.mark.stack_independent
def test_a_diverging_run_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    make_corpus(corpus, n_clips=8, seed=0)
    common = ["--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "2", "--log-every", "1"]
    good = subprocess.run(
        train_command(corpus, run, *common, "--max-steps", "2"), capture_output=True, text=True, env=ENV
    )
    assert good.returncode == 0, good.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    (run / "checkpoints" / "final.ckpt").unlink()
    (run / TEACHER_EXPORT).unlink()
    # resumed with a learning rate of 1e30: the first update fills the weights with Inf/NaN
    bad = subprocess.run(
        train_command(corpus, run, *common, "--max-steps", "6", "--base-lr", "1e30"),
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert re.search(r"error: training diverged at step \d+: the loss is (nan|inf)", bad.stderr), bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr
    assert last.read_bytes() == before, "last.ckpt was overwritten by the diverged run"
    assert not (run / "checkpoints" / "final.ckpt").exists() and not (run / TEACHER_EXPORT).exists()
    encoder, _ = load_encoder(last)  # still the good, finite weights
    assert all(bool(torch.isfinite(p).all()) for p in encoder.parameters())


def test_checkpoints_with_non_finite_weights_are_refused_with_the_weight_named(hostile_files):
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight .* NaN or Inf .* diverged"):
        load_encoder(hostile_files["nan_weights"])


@pytest.mark.stack_independent
def test_a_diverging_finetuning_run_stops_naming_the_step(tmp_path):
    from pretrain import write_random_checkpoint
    from pretrain.finetune.generated_tasks import make_scene_task
    from tests.support.pretrain_runs import finetune_command

    make_scene_task(tmp_path / "tasks")
    write_random_checkpoint(tmp_path / "tiny.ckpt", "tiny")
    command = finetune_command(
        tmp_path / "tiny.ckpt", tmp_path / "tasks" / "synth_scene", tmp_path / "out", "--preset", "tiny",
        "--epochs", "3", "--lr", "1e30",
    )  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert out.returncode == 2, out.stderr[-3000:]
    assert re.search(r"error: training diverged at step \d+: the loss is (nan|inf)", out.stderr), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out" / "scores.json").exists()
