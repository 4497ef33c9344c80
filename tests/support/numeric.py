"""Test signals and the parity measure."""

from __future__ import annotations

import numpy as np
import torch


def noise(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """``(n, samples)`` seeded white noise at 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, int(seconds * 16000), generator=g)


def rel_err(ours, ref) -> float:
    """``max |ours - ref| / max |ref|``: the parity measure (1e-4 in float32)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
