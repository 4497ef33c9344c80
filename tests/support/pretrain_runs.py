"""Running `python -m pretrain train` as a user would, and reading what the run wrote."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pretrain import read_checkpoint
from pretrain.training.recipes import RECIPES

ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def train_command(data: Path, run_dir: Path, *extra: str, family: str = "clip") -> list[str]:
    return [
        sys.executable,
        "-m",
        "pretrain",
        "train",
        "--preset",
        RECIPES[family].cpu_preset,
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--num-workers",
        "0",
        *extra,
    ]


def finetune_args(checkpoint: Path, task: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of `python -m pretrain finetune` on a HEAR task folder."""
    return ["finetune", "--checkpoint", str(checkpoint), "--task", str(task), "--out", str(out), *extra]


def finetune_command(checkpoint: Path, task: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pretrain", *finetune_args(checkpoint, task, out, *extra)]


def run_training(data: Path, run_dir: Path, *extra: str, family: str = "clip") -> subprocess.CompletedProcess:
    command = train_command(data, run_dir, *extra, family=family)
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    from pretrain.runs.plot import read_metrics

    return read_metrics(run_dir)


def data_order(run_dir: Path, name: str = "data_order.jsonl") -> dict[int, list[str]]:
    """Samples of each step; a resumed run repeats steps after its checkpoint: the last record wins."""
    order = {}
    for line in (run_dir / name).read_text().splitlines():
        record = json.loads(line)
        order[record["step"]] = record["files"] + record["skipped"]
    return order


def _logged(run_dir: Path, step: int) -> bool:
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    if not metrics.is_file():
        return False
    with open(metrics, newline="") as f:
        return any(row.get("train/lr") and int(float(row["step"])) == step for row in csv.DictReader(f))


def kill_after_checkpoint(command: list[str], run_dir: Path, *, step: int) -> int:
    """Start a run (logging every step), SIGKILL it just after its step-``step`` checkpoint and
    last.ckpt are written and the metrics of step ``step - 1`` are on disk (Lightning logs a step's
    metrics after the checkpoint callback of that batch); returns the global step last.ckpt holds."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    checkpoint = run_dir / "checkpoints" / f"step{step:07d}.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    last = run_dir / "checkpoints" / "last.ckpt"
    while process.poll() is None and time.time() < deadline and last.stat().st_mtime < checkpoint.stat().st_mtime:
        time.sleep(0.05)  # last.ckpt is rewritten right after the step checkpoint
    while process.poll() is None and time.time() < deadline and not _logged(run_dir, step - 1):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (run_dir / "checkpoints" / "final.ckpt").exists()
    return read_checkpoint(last)["global_step"]
