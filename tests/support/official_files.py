"""Checkpoints in the official layouts, written by the fixture writers (``tests/fixtures/README.md``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def official_checkpoint(out: Path, arch: str, seed: int, layout: str) -> Path:
    """A random-weight file in the official ATST-Clip layouts (fixtures/official_ckpt.py)."""
    subprocess.run(
        [sys.executable, str(FIXTURES / "official_ckpt.py"), str(out), arch, str(seed), layout],
        check=True,
        cwd=out.parent,
    )
    return out


def frame_checkpoint(out: Path, arch: str, seed: int, optimizer: str = "lean") -> Path:
    """A random-weight file in the official ATST-Frame layout (fixtures/official_frame_ckpt.py)."""
    subprocess.run(
        [sys.executable, str(FIXTURES / "official_frame_ckpt.py"), str(out), arch, str(seed), optimizer],
        check=True,
        cwd=out.parent,
    )
    return out


def encoder_weights(path: Path, prefix: str = "model.teacher.encoder.") -> dict[str, torch.Tensor]:
    """Encoder tensors of a file this test session wrote itself (so a plain torch.load is fine)."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
