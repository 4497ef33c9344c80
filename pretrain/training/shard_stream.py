"""Streaming pretraining batches from WebDataset tar shards (written by ``shard_writer``).

The order is a pure function of the seed and the batch number, as for folders
(``data.StepSampler``), so a resumed run reads what an uninterrupted one would:

* **Streams.** Every rank runs ``W`` loader streams (``W`` = loader workers, 1 without
  workers): ``R * W`` streams in all, stream ``s = rank * W + q``. Each pass over the
  collection deals a seeded permutation of the shards round-robin to the streams, so within a
  pass every sample belongs to exactly one stream of one rank. Streams go through their passes
  independently (their shard sets differ in size).
* **Shuffle.** A stream reads its shards in order and shuffles in blocks of ``shuffle_buffer``
  consecutive samples (a seeded permutation per block); the shards themselves were shuffled
  when written.
* **Batches.** A rank's local batch ``k`` is batch ``k // W`` of its stream ``k % W``, which is
  exactly the batch the DataLoader's round-robin over its workers asks for at that place.
* **Resume.** Resuming at local batch ``k0`` starts each stream at its sample position; whole
  passes and whole shards before it are skipped from the index's sample counts without being
  read, and only the shard holding the position is read up to it (without decoding audio).

Guarantee: with the same shards, index, seed, world size, loader workers, batch size and
gradient accumulation, a resumed run reads exactly the samples, crops and order of an
uninterrupted run; nothing of the current pass is repeated or lost. With another layout the
run continues (with a warning) from the equivalent stream positions of the new layout, which
keeps the step count and schedules but not the no-repeat guarantee for the current pass.

A sample whose audio does not decode, and the rest of a shard that breaks off (truncated
download, bad tar header), are skipped and counted like unreadable files in a folder.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from pretrain.model.audio_io import AUDIO_SUFFIXES, AudioFileError
from pretrain.model.frontend import SAMPLE_RATE
from pretrain.runs.seeds import mix_seed
from pretrain.training.data import DatasetError, collate_crops, read_crops
from pretrain.training.shard_writer import INDEX_FORMAT, INDEX_NAME

log = logging.getLogger(__name__)

AUDIO_MEMBERS = tuple(s.lstrip(".") for s in AUDIO_SUFFIXES)
SHARD_READ_ERRORS = (tarfile.TarError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class Shard:
    url: str  # a local path or any URL webdataset's gopen opens (pipe:, file:, ...)
    name: str  # the shard's file name, its entry in the index
    samples: int


def is_shard_source(data: str) -> bool:
    """Whether ``--data`` names shards: ``pipe:``, a brace pattern or ``.tar`` path, or a folder
    holding ``.tar`` files (a folder of shards without its index is then a clear error)."""
    if data.startswith("pipe:") or "{" in data or data.endswith(".tar") or "::" in data:
        return True
    path = Path(data)
    return path.is_dir() and any(path.glob("*.tar"))


def _shard_file_name(url: str) -> str:
    last = url.split()[-1] if url.startswith("pipe:") else url
    return os.path.basename(last.rstrip("/"))


def resolve_shards(data: str, index: str | os.PathLike | None = None) -> list[Shard]:
    """The shards ``--data`` names, with their sample counts from the shard index (``index``, or
    ``index.json`` beside local shards)."""
    from webdataset.shardlists import expand_urls

    path = Path(data)
    if not data.startswith("pipe:") and path.is_dir():
        urls = [str(p) for p in sorted(path.glob("*.tar"))]
    else:
        urls = list(expand_urls(data))
    if not urls:
        raise DatasetError(f"no shards in {data}")
    local = [u for u in urls if not u.startswith("pipe:") and "://" not in u]
    missing = [u for u in local if not Path(u.removeprefix("file:")).is_file()]
    if missing:
        raise DatasetError(f"shard not found: {missing[0]} ({len(missing)} of {len(urls)} missing)")
    if index is None:
        if len(local) != len(urls):
            raise DatasetError(f"streamed shards ({urls[0]}) need --shard-index: the index.json `pretrain shard` wrote")
        index = Path(local[0].removeprefix("file:")).parent / INDEX_NAME
    index = Path(index)
    if not index.is_file():
        raise DatasetError(f"shard index not found: {index} (written by `python -m pretrain shard`)")
    try:
        content = json.loads(index.read_text())
        if content.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {content.get('format')!r}, expected {INDEX_FORMAT!r}")
        counts = {entry["name"]: int(entry["samples"]) for entry in content["shards"]}
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"not a shard index: {index}: {err}") from None
    shards = []
    for url in urls:
        name = _shard_file_name(url)
        if name not in counts:
            raise DatasetError(f"shard {url} is not in the shard index {index}")
        if counts[name]:
            shards.append(Shard(url, name, counts[name]))
    if not shards:
        raise DatasetError(f"the shards of {data} hold no samples")
    return shards


class ShardStream(IterableDataset):
    """Batches ``start_batch .. end_batch - 1`` of one rank, read from shards (module docstring):
    dicts as ``data.collate_crops`` makes them, plus ``passes``: ``[name, pass number]`` of every
    sample in stream order."""

    def __init__(
        self,
        shards: list[Shard],
        *,
        crop_seconds: float,
        n_crops: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 1,
        start_batch: int = 0,
        end_batch: int,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.streams = world * workers
        if len(shards) < self.streams:
            raise DatasetError(
                f"{len(shards)} shards cannot feed {world} ranks x {workers} loader workers = {self.streams} "
                "streams: write smaller shards (--shard-size) or use fewer loader workers"
            )
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.shards = shards
        self.n_samples = int(crop_seconds * SAMPLE_RATE)
        self.n_crops, self.batch_size, self.seed = n_crops, batch_size, seed
        self.rank, self.workers = rank, workers
        self.start_batch, self.end_batch = start_batch, end_batch
        self.shuffle_buffer = shuffle_buffer

    def stream_shards(self, pass_number: int, stream: int) -> list[Shard]:
        """The shards stream ``stream`` reads in pass ``pass_number``, in order."""
        order = np.random.default_rng(mix_seed(self.seed, "shards", pass_number)).permutation(len(self.shards))
        return [self.shards[i] for i in order[stream :: self.streams]]

    def _read_shard(self, shard: Shard, skip: int) -> Iterator[tuple[str, dict | None]]:
        """Samples ``skip ..`` of a shard as ``(name, members)``; exactly the index's count: the
        rest of a shard that breaks off comes as ``None`` (skipped), extra samples are ignored."""
        from webdataset.tariterators import tarfile_samples

        n = 0
        try:
            for sample in tarfile_samples([{"url": shard.url}]):
                if n == shard.samples:
                    log.warning("shard %s holds more samples than its index entry (%d)", shard.url, shard.samples)
                    break
                if n >= skip:
                    yield f"{shard.name}/{sample['__key__']}", sample
                n += 1
        except SHARD_READ_ERRORS as err:
            log.warning("shard %s breaks off after %d of %d samples: %s", shard.url, n, shard.samples, err)
        else:
            if n < shard.samples:
                log.warning("shard %s ends after %d of its %d samples", shard.url, n, shard.samples)
        for i in range(max(n, skip), shard.samples):
            yield f"{shard.name}#{i}", None

    def _samples(self, stream: int, start: int) -> Iterator[tuple[int, int, str, dict | None]]:
        """``(pass, position, name, members)`` of stream ``stream`` from sample position ``start`` on."""
        pass_number, offset = 0, start
        while offset >= (size := sum(s.samples for s in self.stream_shards(pass_number, stream))):
            offset, pass_number = offset - size, pass_number + 1
        position, block_size = start, self.shuffle_buffer
        while True:
            shards = self.stream_shards(pass_number, stream)
            block_first = offset // block_size * block_size
            first_shard, skip = 0, block_first
            while skip >= shards[first_shard].samples:
                skip -= shards[first_shard].samples
                first_shard += 1
            members = itertools.chain(
                self._read_shard(shards[first_shard], skip),
                *(self._read_shard(s, 0) for s in shards[first_shard + 1 :]),
            )
            block_number, drop = block_first // block_size, offset - block_first
            while block := list(itertools.islice(members, block_size)):
                order = np.random.default_rng(mix_seed(self.seed, "block", pass_number, stream, block_number))
                for i in order.permutation(len(block))[drop:]:
                    yield pass_number, position, *block[i]
                    position += 1
                block_number, drop = block_number + 1, 0
            pass_number, offset = pass_number + 1, 0

    def _decode(self, stream: int, position: int, name: str, members: dict | None):
        if members is None:
            return None
        audio = next((members[ext] for ext in AUDIO_MEMBERS if ext in members), None)
        if audio is None:
            log.warning("skipping %s: no audio member (%s)", name, ", ".join(AUDIO_MEMBERS))
            return None
        seed = mix_seed(self.seed, "crop", stream, position)
        try:
            return read_crops(io.BytesIO(audio), self.n_samples, n_crops=self.n_crops, seed=seed, name=name)
        except AudioFileError as err:
            log.warning("skipping unreadable audio: %s", err)
            return None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ShardStream built for {self.workers} loader workers runs in {workers}")
        first = self.start_batch + worker
        stream = self.rank * workers + first % workers
        samples = self._samples(stream, first // workers * self.batch_size)
        for _ in range(first, self.end_batch, workers):
            chunk = list(itertools.islice(samples, self.batch_size))
            batch = collate_crops([(self._decode(stream, pos, name, members), name) for _, pos, name, members in chunk])
            batch["passes"] = [[name, pass_number] for pass_number, _, name, _ in chunk]
            yield batch
