"""Audio collections for pretraining: random crops per clip (two for ATST-Clip, one for
ATST-Frame), a resumable sample order, and corrupt files skipped and counted instead of
stopping the run."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from pretrain.model.audio_io import (
    AUDIO_SUFFIXES,
    UNKNOWN_FRAMES,
    AudioFileError,
    open_audio,
    read_whole,
    to_mono_16k,
)
from pretrain.model.frontend import SAMPLE_RATE
from pretrain.runs.seeds import mix_seed

log = logging.getLogger(__name__)
SCAN_BLOCK_FRAMES = 1 << 18  # a scan decodes in blocks: memory stays flat on hour-long files


class DatasetError(ValueError):
    """A dataset location that holds nothing usable (missing, empty, bad manifest)."""


def list_audio(source: str | os.PathLike) -> list[Path]:
    """Audio files of a folder tree (sorted), or the ``path`` column of a CSV/TSV manifest
    (paths relative to the manifest's folder; other columns such as ``duration`` are ignored)."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"dataset not found: {source}")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    else:
        delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
        if not rows or "path" not in rows[0]:
            raise DatasetError(f"manifest {source} needs a header with a 'path' column")
        files = [(source.parent / row["path"]) if not os.path.isabs(row["path"]) else Path(row["path"]) for row in rows]
    if not files:
        raise DatasetError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {source}")
    return files


def read_crops(
    source: str | os.PathLike | BinaryIO, n_samples: int, *, n_crops: int = 2, seed: int = 0, name: str | None = None
) -> Tensor:
    """``n_crops`` random crops of ``n_samples`` at 16 kHz, mono: ``(n_crops, n_samples)``; clips
    shorter than a crop are zero-padded. ``source`` is a path or an open binary file (a shard
    member); ``name`` is what errors call it. The file is opened once: a short file is decoded
    (and resampled) whole, a long one only at the crops."""
    path = name or str(source)
    rng = np.random.default_rng(seed)

    def crop_starts(total: int) -> list[int]:
        return [int(rng.integers(0, total - n_samples + 1)) if total > n_samples else 0 for _ in range(n_crops)]

    with open_audio(source, path) as f:
        rate, known = f.samplerate, f.frames != UNKNOWN_FRAMES
        total = int(f.frames * SAMPLE_RATE / rate) if known else None
        at_crops = known and f.seekable() and total > n_crops * n_samples
        if at_crops:
            spans = []
            for start in crop_starts(total):
                f.seek(int(start * rate / SAMPLE_RATE))
                spans.append(f.read(math.ceil(n_samples * rate / SAMPLE_RATE), dtype="float32", always_2d=True))
        else:  # short, or a stream that states no length or cannot seek: decoded whole
            whole = read_whole(f, path)
    if at_crops:
        crops = [to_mono_16k(data, rate, path)[:n_samples] for data in spans]
    else:
        wav = to_mono_16k(whole, rate, path)
        crops = [wav[start : start + n_samples] for start in crop_starts(len(wav) if total is None else total)]
    return torch.stack([torch.nn.functional.pad(c, (0, n_samples - c.numel())) for c in crops])


@dataclass(frozen=True)
class SampleKey:
    index: int  # file index in the collection
    seed: int  # seeds the crop positions


class CropDataset(Dataset):
    """``n_crops`` independent random crops of ``crop_seconds`` of one clip: ``(n_crops, n)`` float32.

    Shorter clips are zero-padded (as the official random crop). A file that cannot be read
    gives ``None`` (the collate function skips and counts it)."""

    def __init__(self, files: list[Path], crop_seconds: float, n_crops: int = 2) -> None:
        self.files = files
        self.n_samples = int(crop_seconds * SAMPLE_RATE)
        self.n_crops = n_crops

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: SampleKey) -> tuple[Tensor, str] | tuple[None, str]:
        path = self.files[key.index]
        try:
            return read_crops(path, self.n_samples, n_crops=self.n_crops, seed=key.seed), str(path)
        except AudioFileError as err:
            log.warning("skipping unreadable audio: %s", err)
            return None, str(path)


def collate_crops(items: list[tuple[Tensor | None, str]]) -> dict:
    """Stack the readable items; report the unreadable ones."""
    good = [x for x, _ in items if x is not None]
    bad = [path for x, path in items if x is None]
    wavs = torch.stack(good) if good else torch.empty(0)
    return {"wavs": wavs, "skipped": bad, "names": [path for x, path in items if x is not None]}


class StepSampler(Sampler[list[SampleKey]]):
    """Batches ``start_batch .. end_batch - 1`` of one seeded stream of epoch permutations.

    Global batch ``k`` holds stream positions ``[k * B * world, (k + 1) * B * world)``; each rank
    takes its own slice. The order is a pure function of (seed, batch number), so a run resumed
    at batch ``start_batch`` continues exactly where an uninterrupted run would be.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        end_batch: int,
    ) -> None:
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world = rank, world
        self.start_batch, self.end_batch = start_batch, end_batch
        self._epoch: int | None = None
        self._perm: np.ndarray | None = None

    def _item(self, position: int) -> SampleKey:
        epoch, offset = divmod(position, self.n_items)
        if epoch != self._epoch:
            self._perm = np.random.default_rng(mix_seed(self.seed, epoch)).permutation(self.n_items)
            self._epoch = epoch
        return SampleKey(int(self._perm[offset]), mix_seed(self.seed, position))

    def batch(self, k: int) -> list[SampleKey]:
        first = (k * self.world + self.rank) * self.batch_size
        return [self._item(p) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for k in range(self.start_batch, self.end_batch):
            yield self.batch(k)

    def __len__(self) -> int:
        return max(self.end_batch - self.start_batch, 0)


@dataclass
class ScanReport:
    files: int = 0
    readable: int = 0
    seconds: float = 0.0
    shorter_than_crop: int = 0
    silent: int = 0
    sample_rates: dict[int, int] | None = None
    problems: list[str] | None = None


def scan_dataset(source: str | os.PathLike, *, crop_seconds: float, progress: bool = True) -> ScanReport:
    """Read every file once: what a run will skip, pad or resample."""
    from tqdm import tqdm

    files = list_audio(source)
    report = ScanReport(files=len(files), sample_rates={}, problems=[])
    for path in tqdm(files, desc="scanning", disable=not progress):
        try:
            with open_audio(path) as f:
                rate, frames = f.samplerate, 0
                finite, peak = True, 0.0
                while (block := f.read(SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True)).shape[0]:
                    frames += block.shape[0]
                    finite = finite and bool(np.isfinite(block).all())
                    peak = max(peak, float(np.abs(block).max(initial=0.0)))
        except AudioFileError as err:
            report.problems.append(f"{path}: unreadable ({err})")
            continue
        if frames == 0:
            report.problems.append(f"{path}: no samples")
            continue
        if not finite:
            report.problems.append(f"{path}: NaN or Inf samples")
            continue
        report.readable += 1
        seconds = frames / rate
        report.seconds += seconds
        report.sample_rates[rate] = report.sample_rates.get(rate, 0) + 1
        report.shorter_than_crop += seconds < crop_seconds
        report.silent += peak == 0.0
    return report
