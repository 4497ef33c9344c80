"""What the benchmarks share: the machine they ran on, a process's own peak memory, the report file,
the package's command line."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process image in MB.

    ``VmHWM`` (Linux) rather than ``getrusage().ru_maxrss``: the latter survives fork and exec,
    so a process started by a large parent (a test runner holding checkpoints) reports the
    parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """CPU model, cores, Python and torch versions, for the header of a figure."""
    import torch

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def write_report(lines: list[str], out: str | os.PathLike | None) -> None:
    """The benchmark's markdown table (``lines``) to ``out``, when one is given."""
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


def finetune_command(checkpoint: Path, task: Path, out: Path, *flags: str) -> list[str]:
    """``python -m pretrain finetune`` on a HEAR task folder, in this interpreter."""
    return [sys.executable, "-m", "pretrain", "finetune", "--checkpoint", str(checkpoint), "--task", str(task)] + [
        "--out", str(out), *flags
    ]
