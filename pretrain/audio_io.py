"""Reading audio files as 16 kHz mono float32 waveforms."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from torch import Tensor

from pretrain.frontend import SAMPLE_RATE

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioFileError(ValueError):
    """An audio file that cannot be read (missing, corrupt, empty or unsupported)."""


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Read a wav/flac/ogg file, mix down to mono and resample: 1-D float32 tensor."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioFileError(f"cannot decode {path}: {err}") from None
    if data.size == 0:
        raise AudioFileError(f"audio file has no samples: {path}")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not bool(torch.isfinite(wav).all()):
        raise AudioFileError(f"audio file contains NaN or Inf samples: {path}")
    if rate != sample_rate:
        wav = torchaudio.functional.resample(wav, rate, sample_rate)
    return wav
