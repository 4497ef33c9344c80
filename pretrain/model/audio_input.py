"""Validation of waveforms handed to the feature extractors (HEAR, s3prl, scripts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pretrain.model.frontend import MIN_SAMPLES, SAMPLE_RATE


class AudioInputError(ValueError):
    """A waveform the model cannot take: wrong shape, dtype, values or length."""


def _check_clip(wav: Tensor, name: str) -> None:
    if not wav.is_floating_point():
        raise AudioInputError(f"{name} must be floating point audio, got dtype {wav.dtype}")
    if wav.shape[-1] < MIN_SAMPLES:
        raise AudioInputError(
            f"{name} has {wav.shape[-1]} samples; ATST needs at least {MIN_SAMPLES} "
            f"({1000 * MIN_SAMPLES / SAMPLE_RATE:.1f} ms at {SAMPLE_RATE} Hz)"
        )
    if not bool(torch.isfinite(wav).all()):
        raise AudioInputError(f"{name} contains NaN or Inf samples")


def check_batch(audio: Tensor) -> Tensor:
    """Check the form of a ``(n_sounds, n_samples)`` batch (the HEAR API) and return it as float32;
    each clip's length and values are checked once, by ``check_clips``, on the way to the model."""
    if not isinstance(audio, Tensor):
        raise AudioInputError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
    if audio.ndim != 2:
        raise AudioInputError(f"audio must be 2-D (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    if audio.shape[0] == 0:
        raise AudioInputError("audio holds no sounds (shape[0] == 0)")
    if not audio.is_floating_point():
        raise AudioInputError(f"audio must be floating point, got dtype {audio.dtype}")
    return audio.float()


def check_clips(wavs: Sequence[Tensor]) -> list[Tensor]:
    """Check a list of 1-D waveforms of any lengths (the s3prl API) and return float32 ones."""
    if isinstance(wavs, Tensor) or len(wavs) == 0:
        raise AudioInputError("wavs must be a non-empty list of 1-D tensors")
    out = []
    for i, wav in enumerate(wavs):
        if not isinstance(wav, Tensor):
            raise AudioInputError(f"clip {i} must be a torch.Tensor, got {type(wav).__name__}")
        if wav.ndim != 1:
            raise AudioInputError(f"clip {i} must be 1-D, got shape {tuple(wav.shape)}")
        _check_clip(wav, f"clip {i}")
        out.append(wav.float())
    return out
