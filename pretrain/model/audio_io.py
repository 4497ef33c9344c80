"""Reading audio files as 16 kHz mono float32 waveforms.

Decoding is libsndfile's (``soundfile``); resampling is libsoxr's (``soxr``, the resampler
librosa uses) at its high-quality setting. ``benchmarks/resample_quality.py`` compares it
with torchaudio's ``Resample``, which it replaces: passband ripple, aliasing of tones above
the new Nyquist frequency, and speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from pretrain.model.frontend import SAMPLE_RATE

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioFileError(ValueError):
    """An audio file that cannot be read (missing, corrupt, empty or unsupported)."""


DECODE_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError)
RESAMPLE_QUALITY = "HQ"


def resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """1-D float32 samples at ``rate`` -> 16 kHz (libsoxr, high quality)."""
    if rate == SAMPLE_RATE:
        return wav
    return soxr.resample(wav, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)


def to_mono_16k(data: np.ndarray, rate: int, path: str | os.PathLike) -> Tensor:
    """Decoded ``(frames, channels)`` samples -> 1-D float32 at 16 kHz; errors name the file."""
    if data.size == 0:
        raise AudioFileError(f"audio file has no samples: {path}")
    mono = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioFileError(f"audio file contains NaN or Inf samples: {path}")
    return torch.from_numpy(np.ascontiguousarray(resample(mono, rate)))


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
