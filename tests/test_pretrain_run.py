"""Real Lightning pretraining runs through the command line, on generated audio (CPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atst_hear
from pretrain import load_encoder, read_checkpoint
from pretrain.model.encoder import ATSTEncoder
from pretrain.runs.schedules import learning_rate, weight_decay
from pretrain.training.probe import read_probe
from tests.support.pretrain_runs import ENV, data_order, kill_after_checkpoint, metrics, run_training, train_command

WIDTH = {"clip": 2 * 4 * 192, "frame": 4 * 192}  # tiny scene embeddings: Clip CLS + mean, Frame mean


@pytest.fixture(scope="module", params=["clip", "frame"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def short_run(corpus, family, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / f"short_{family}"
    result = run_training(
        corpus,
        run_dir,
        "--drop-path",
        "0.1",  # the official rate, exercised here (the tiny presets use none)
        "--max-steps",
        "40",
        "--batch-size",
        "8",
        "--warmup-steps",
        "5",
        "--checkpoint-every",
        "20",
        "--log-every",
        "2",
        family=family,
    )
    (run_dir / "output.txt").write_text(result.stdout + result.stderr)  # Lightning draws its bars on stdout
    return run_dir


def test_progress_bar_counts_steps_of_max_steps(short_run):
    lines = (short_run / "output.txt").read_text().replace("\r", "\n").splitlines()  # tqdm redraws with \r
    bar = [line for line in lines if "pretraining" in line]
    assert bar and "40/40" in bar[-1] and "step/s" in bar[-1] and "train/loss=" in bar[-1], bar[-1:]
    assert all("Epoch" not in line and "v_num" not in line for line in bar)


def test_run_writes_checkpoints_logs_and_export(short_run, family):
    ckpts = short_run / "checkpoints"
    assert {"last.ckpt", "final.ckpt", "step0000020.ckpt", "step0000040.ckpt"} <= {p.name for p in ckpts.iterdir()}
    assert list((short_run / "tensorboard").rglob("events.out.tfevents.*"))
    final = read_checkpoint(ckpts / "final.ckpt")  # Lightning 2 checkpoint through the safe loader
    assert final["global_step"] == 40
    assert final["hyper_parameters"]["format"] == "atst-pretrain"
    encoder, spec = load_encoder(short_run / "atst_teacher.safetensors")
    crop = {"clip": 2.0, "frame": 4.0}[family]
    assert (spec.family, spec.embed_dim, spec.depth, spec.crop_seconds) == (family, 192, 4, crop)
    official_crop_key = {"clip": "train_len", "frame": "anchor_len"}[family]
    assert final["hyper_parameters"][official_crop_key] == crop
    weights = final["state_dict"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, weights["model.teacher.encoder." + key])


def test_corrupt_file_is_skipped_and_counted(short_run):
    final = read_checkpoint(short_run / "checkpoints" / "final.ckpt")
    assert final["skipped_files"] >= 1  # 1 corrupt file in 25; 40 steps x 8 samples see it 12 times
    logged = metrics(short_run)["data/skipped_files"]
    assert logged[max(logged)] == final["skipped_files"]


def test_schedules_at_chosen_steps(short_run):
    series = metrics(short_run)
    peak = 4e-3 * 8 / 256
    for step in (1, 3, 5, 11, 25, 39):  # logged every 2nd step
        assert series["train/lr"][step] == pytest.approx(
            learning_rate(step, peak=peak, total_steps=40, warmup_steps=5), rel=1e-5
        )
        assert series["train/wd"][step] == pytest.approx(weight_decay(step, total_steps=40), rel=1e-5)
    assert series["train/ema"][39] > series["train/ema"][1] >= 0.99


def test_teacher_follows_student_by_ema(short_run, family):
    weights = read_checkpoint(short_run / "checkpoints" / "final.ckpt")["state_dict"]
    torch.manual_seed(0)  # the run's seed: the encoder both branches started from
    initial = ATSTEncoder.from_arch("tiny", family=family).state_dict()
    key = "blocks.2.mlp.fc1.weight"
    teacher, student = weights["model.teacher.encoder." + key], weights["model.student.encoder." + key]
    assert not torch.equal(teacher, initial[key])  # the teacher moved
    assert not torch.equal(teacher, student)  # ... by averaging, not copying
    assert (teacher - student).norm() < (initial[key] - student).norm()  # ... towards the student


def test_loss_falls_and_outputs_do_not_collapse(short_run):
    series = metrics(short_run)
    loss = [series["train/loss"][s] for s in sorted(series["train/loss"])]
    assert all(math.isfinite(v) for v in loss)
    assert sum(loss[-4:]) / 4 < 0.8 * sum(loss[:4]) / 4
    assert min(series["train/std_teacher"].values()) > 0.01


def test_checkpoint_works_in_hear_validator_and_plot(short_run, family):
    final = short_run / "checkpoints" / "final.ckpt"
    model = atst_hear.load_model(str(final))
    emb = atst_hear.get_scene_embeddings(0.1 * torch.randn(2, 32000), model)
    assert model.family == family and emb.shape == (2, WIDTH[family]) and torch.isfinite(emb).all()
    validator = Path(sys.executable).parent / "hear-validator"
    result = subprocess.run(
        [str(validator), "atst_hear", "-m", str(final), "-d", "cpu"], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0 and "Looks good!" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "pretrain", "plot", str(short_run)], capture_output=True, text=True)
    assert out.returncode == 0 and (short_run / "curves.png").stat().st_size > 10_000


def test_frame_run_logs_the_realised_mask_fraction(short_run, family):
    if family != "frame":
        assert "train/mask_fraction" not in metrics(short_run)
        return
    fractions = list(metrics(short_run)["train/mask_fraction"].values())
    assert 0.4 < sum(fractions) / len(fractions) < 0.6  # spans of 5 at 0.65 mask about half, not 65 %


@pytest.mark.stack_independent
@pytest.mark.parametrize("family", ["clip", "frame"])
def test_kill_and_resume_matches_uninterrupted_run(corpus, probe_tasks, tmp_path, family):
    flags = [
        "--probe",
        ",".join(str(t) for t in probe_tasks[:2]),
        "--probe-every",
        "4",
        "--max-steps",
        "12",
        "--batch-size",
        "4",
        "--warmup-steps",
        "3",
        "--checkpoint-every",
        "4",
        "--log-every",
        "1",
        "--log-data-order",
        "true",
    ]
    run_training(corpus, tmp_path / "straight", *flags, family=family)

    interrupted = tmp_path / "interrupted"
    before = kill_after_checkpoint(train_command(corpus, interrupted, *flags, family=family), interrupted, step=8)
    assert 8 <= before < 12

    result = run_training(corpus, interrupted, *flags, family=family)  # --resume auto: continues from last.ckpt
    assert "resuming from" in result.stderr
    finals = [read_checkpoint(d / "checkpoints" / "final.ckpt") for d in (tmp_path / "straight", interrupted)]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 12
    assert data_order(tmp_path / "straight") == data_order(interrupted)
    straight, resumed = metrics(tmp_path / "straight"), metrics(interrupted)
    for step in range(12):
        assert resumed["train/lr"][step] == straight["train/lr"][step]
        assert resumed["train/ema"][step] == straight["train/ema"][step]
        if family == "frame":  # the masks are functions of the seed and the step too
            assert resumed["train/mask_fraction"][step] == straight["train/mask_fraction"][step]
    # the online probe continues across the resume; up to the resume point the same teacher gives the
    # same figures (after it, the views differ: the Mixup banks start empty)
    probes = [{r["step"]: r for r in read_probe(d)} for d in (tmp_path / "straight", interrupted)]
    assert sorted(probes[0]) == sorted(probes[1]) == [0, 4, 8, 12]
    for step in (0, 4, 8):
        assert {k: v for k, v in probes[0][step].items() if k != "seconds"} == {
            k: v for k, v in probes[1][step].items() if k != "seconds"
        }


@pytest.mark.stack_independent
@pytest.mark.parametrize("family", ["clip", "frame"])
def test_two_process_ddp_on_cpu(corpus, probe_tasks, tmp_path, family):
    run_dir = tmp_path / "ddp"
    run_training(
        corpus,
        run_dir,
        "--probe",
        str(probe_tasks[0]),
        "--probe-every",
        "3",
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--warmup-steps",
        "2",
        "--checkpoint-every",
        "3",
        "--log-every",
        "1",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--log-data-order",
        "true",
        family=family,
    )
    final = read_checkpoint(run_dir / "checkpoints" / "final.ckpt")
    assert final["global_step"] == 6 and final["hyper_parameters"]["world_size"] == 2
    ranks = [data_order(run_dir), data_order(run_dir, "data_order.rank1.jsonl")]
    first_24 = [name for step in range(3) for order in ranks for name in order[step]]  # 3 steps x 2 ranks x 4
    assert len(set(first_24)) == 24  # the first pass over the 25 files: no file twice, across ranks
    lr = metrics(run_dir)["train/lr"]
    assert lr[1] == pytest.approx(learning_rate(1, peak=4e-3 * 4 * 2 / 256, total_steps=6, warmup_steps=2), rel=1e-5)
    model = atst_hear.load_model(str(run_dir / "checkpoints" / "final.ckpt"))
    assert atst_hear.get_scene_embeddings(0.1 * torch.randn(1, 16000), model).shape == (1, WIDTH[family])
    # rank 0 alone probes: one record per probed step, and the probe's lines are in the logs
    assert [json.loads(line)["step"] for line in (run_dir / "probe.jsonl").read_text().splitlines()] == [0, 3, 6]
    assert sorted(metrics(run_dir)["probe/speech_commands/knn"]) == [0, 3, 6]


def test_check_command_reports_the_corrupt_file(corpus):
    out = subprocess.run(
        [sys.executable, "-m", "pretrain", "check", str(corpus), "--train-len", "2"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "25 files, 24 readable" in out.stdout and "zz_corrupt.wav" in out.stdout


def test_training_without_data_is_a_clear_error(tmp_path):
    out = subprocess.run(train_command(tmp_path / "missing", tmp_path / "run"), capture_output=True, text=True)
    assert out.returncode == 2 and "dataset not found" in out.stderr
