"""Reading audio files as 16 kHz mono float32 waveforms.

Decoding is libsndfile's (``soundfile``); resampling is libsoxr's (``soxr``, the resampler
librosa uses) at its high-quality setting. ``benchmarks/resample_quality.py`` compares it
with torchaudio's ``Resample``, which it replaces: passband ripple, aliasing of tones above
the new Nyquist frequency, and speed.

A header is not trusted: ``open_audio`` refuses what is not a regular file (a FIFO would block),
a sample rate outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``, and a frame count the file's size
cannot hold (``pretrain.model.limits``), before anything is decoded; a whole-file decode also
keeps to the duration budget (``$ATST_MAX_AUDIO_SECONDS``). Every failure, whichever library
raises it, is an ``AudioFileError`` naming the file, which scans and training count and skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile
import soxr
import torch
from torch import Tensor

from pretrain.model.frontend import SAMPLE_RATE
from pretrain.model.limits import (
    MAX_CHANNELS,
    MAX_FILE_AMPLITUDE,
    MAX_SAMPLE_RATE,
    MAX_SAMPLES_PER_BYTE,
    MIN_SAMPLE_RATE,
    max_audio_seconds,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
RESAMPLE_QUALITY = "HQ"
# Uncompressed subtypes: bytes per sample, so a header's frame count is held to the file's size.
_PCM_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
    "FLOAT": 4, "DOUBLE": 8,
}  # fmt: skip

_COMPRESSED_FORMATS = {"FLAC", "OGG", "MPEG"}
AudioSource = str | os.PathLike | BinaryIO


class AudioFileError(ValueError):
    """An audio file that cannot be read (missing, corrupt, empty, unsupported or implausible)."""


def _brief(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _size(source: AudioSource, name: str) -> int:
    """Bytes the source holds; a path must be a regular file (a FIFO or device would block or never end)."""
    if hasattr(source, "read"):
        try:
            here = source.tell()
            end = source.seek(0, io.SEEK_END)
            source.seek(here)
        except (OSError, ValueError, AttributeError) as err:
            raise AudioFileError(f"cannot read {name}: not a seekable file ({_brief(err)})") from None
        return end - here
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise AudioFileError(f"audio file not found: {name}") from None
    except OSError as err:
        raise AudioFileError(f"cannot read {name}: {_brief(err)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioFileError(f"{name} is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioFileError(f"{name} is not a regular file (a FIFO, socket or device); audio is read from files")
    return info.st_size


UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count for a stream that does not state its length
READ_BLOCK_FRAMES = 1 << 16  # whole-file reads decode in blocks, mixed to mono as they come


def _check_header(f: soundfile.SoundFile, size: int, name: str) -> None:
    rate, frames, channels = f.samplerate, f.frames, f.channels
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioFileError(
            f"{name} declares a sample rate of {rate} Hz, outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
            "(a corrupt header?)"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioFileError(f"{name} declares {channels} channels (1..{MAX_CHANNELS} are read)")
    if frames < 0:
        raise AudioFileError(f"{name} declares {frames} frames")
    if frames == UNKNOWN_FRAMES:  # a streamed FLAC (total samples 0): bounded while decoding instead
        return
    width = None if f.format in _COMPRESSED_FORMATS else _PCM_BYTES.get(f.subtype)  # FLAC says PCM_16 too
    if width is not None:
        claimed, holds = frames * channels * width, size
        if claimed > holds:
            raise AudioFileError(
                f"{name} declares {frames:,} frames x {channels} channels of {f.subtype} ({claimed:,} bytes) "
                f"but holds {holds:,} bytes"
            )
    else:
        samples = max(frames * channels, frames * SAMPLE_RATE // rate)
        if samples > MAX_SAMPLES_PER_BYTE * max(size, 1):
            raise AudioFileError(
                f"{name} declares {frames:,} frames x {channels} channels in {size:,} bytes of {f.format}, "
                f"more than {MAX_SAMPLES_PER_BYTE:,} samples per byte can code (a corrupt header?)"
            )


@contextlib.contextmanager
def open_audio(source: AudioSource, name: str | None = None) -> Iterator[soundfile.SoundFile]:
    """An open ``soundfile.SoundFile`` whose header has been checked against the file (see the
    module docstring). ``source``: a path or a seekable binary file (a shard member); ``name``:
    what errors call it. Any error while the file is read in the ``with`` body becomes an
    ``AudioFileError`` too."""
    name = name or str(source)
    max_audio_seconds()  # a bad $ATST_MAX_AUDIO_SECONDS is the setting's error, not this file's
    size = _size(source, name)
    try:
        f = soundfile.SoundFile(source if hasattr(source, "read") else str(source))
    except Exception as err:  # libsndfile, format sniffing, a file removed meanwhile: all the file's fault
        raise AudioFileError(f"cannot decode {name}: {_brief(err)}") from None
    with f:
        _check_header(f, size, name)
        try:
            yield f
        except AudioFileError:
            raise
        except Exception as err:  # noqa: BLE001 - decoding errors of any kind name the file
            raise AudioFileError(f"cannot decode {name}: {type(err).__name__}: {_brief(err)}") from None


def read_whole(f: soundfile.SoundFile, name: str) -> np.ndarray:
    """Decode an open file entirely, mixed to mono: 1-D float32 at the file's rate.

    Decoded in blocks (memory: the mono signal, not all channels at once); refused past the
    duration budget, which for a stream of unknown length is checked as it decodes."""
    budget = max_audio_seconds()
    limit = int(budget * f.samplerate)
    if f.frames != UNKNOWN_FRAMES and f.frames > limit:
        raise _over_budget(name, f.frames / f.samplerate, budget)
    known = f.frames != UNKNOWN_FRAMES
    mono = np.empty(f.frames if known else 0, dtype=np.float32)
    done = 0
    while True:
        # ``frames`` given: formats libsndfile cannot seek in (GSM 6.10) read only with a count
        block = f.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        if done + block.shape[0] > limit:
            raise _over_budget(name, (done + block.shape[0]) / f.samplerate, budget)
        mixed = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        if done + block.shape[0] > mono.shape[0]:
            mono = np.concatenate([mono[:done], np.empty(max(done, READ_BLOCK_FRAMES), dtype=np.float32)])
        mono[done : done + block.shape[0]] = mixed
        done += block.shape[0]
    return mono[:done]


def _over_budget(name: str, seconds: float, budget: float) -> AudioFileError:
    return AudioFileError(
        f"{name} lasts {seconds:,.1f} s, over the {budget:g} s read whole per file "
        "(set ATST_MAX_AUDIO_SECONDS to allow longer files)"
    )


def resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """1-D float32 samples at ``rate`` -> 16 kHz (libsoxr, high quality)."""
    if rate == SAMPLE_RATE:
        return wav
    return soxr.resample(wav, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)


def to_mono_16k(data: np.ndarray, rate: int, path: str | os.PathLike) -> Tensor:
    """Decoded samples, ``(frames, channels)`` or already mono ``(frames,)``, -> 1-D float32 at
    16 kHz; errors name the file."""
    if data.size == 0:
        raise AudioFileError(f"audio file has no samples: {path}")
    mono = data if data.ndim == 1 else data.mean(axis=1)
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    peak = float(np.abs(mono).max())  # NaN if any sample is NaN
    if not np.isfinite(peak):
        raise AudioFileError(f"audio file contains NaN or Inf samples: {path}")
    if peak > MAX_FILE_AMPLITUDE:
        raise AudioFileError(
            f"audio file's samples reach {peak:.3g}, not audio in [-1, 1] (a float file of raw counts?): {path}"
        )
    return torch.from_numpy(np.ascontiguousarray(resample(mono, rate)))


def load_audio(source: AudioSource, name: str | None = None) -> Tensor:
    """Read a wav/flac/ogg file, mix down to mono and resample to 16 kHz: 1-D float32 tensor."""
    name = name or str(source)
    with open_audio(source, name) as f:
        data, rate = read_whole(f, name), f.samplerate
    return to_mono_16k(data, rate, name)


__all__ = ["AUDIO_SUFFIXES", "AudioFileError", "load_audio", "open_audio", "read_whole", "resample", "to_mono_16k"]
