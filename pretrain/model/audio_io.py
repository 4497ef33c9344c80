"""Reading audio files as 16 kHz mono float32 waveforms."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from torch import Tensor

from pretrain.model.frontend import SAMPLE_RATE

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioFileError(ValueError):
    """An audio file that cannot be read (missing, corrupt, empty or unsupported)."""


DECODE_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError)


@functools.lru_cache(maxsize=16)
def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """Resampling kernels are costly to build: one per source rate, reused."""
    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


def to_mono_16k(data: np.ndarray, rate: int, path: str | os.PathLike) -> Tensor:
    """Decoded ``(frames, channels)`` samples -> 1-D float32 at 16 kHz; errors name the file."""
    if data.size == 0:
        raise AudioFileError(f"audio file has no samples: {path}")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not bool(torch.isfinite(wav).all()):
        raise AudioFileError(f"audio file contains NaN or Inf samples: {path}")
    return _resampler(rate)(wav) if rate != SAMPLE_RATE else wav


def load_audio(path: str | os.PathLike) -> Tensor:
    """Read a wav/flac/ogg file, mix down to mono and resample to 16 kHz: 1-D float32 tensor."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except DECODE_ERRORS as err:
        raise AudioFileError(f"cannot decode {path}: {err}") from None
    return to_mono_16k(data, rate, path)
