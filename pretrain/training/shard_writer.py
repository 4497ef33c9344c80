"""Writing an audio collection as WebDataset tar shards for streaming pretraining.

``write_shards(SRC, OUT, shard_size=N)`` lists SRC (a folder tree or a CSV/TSV manifest, as
``train --data`` reads them), shuffles the list once with a seed (collections are usually stored
grouped by class or download batch, and training reads shards in blocks), and writes
``OUT/shard-000000.tar`` ... with one sample per input file: ``{key}.{flac|wav|ogg}`` (the original
encoded bytes, or FLAC at 16 kHz mono with ``flac16k``) and ``{key}.json`` (source path, seconds,
original sample rate and channels). The tar layout is WebDataset's, written by ``webdataset``'s
``TarWriter``, so any WebDataset reader can stream the shards too.

Every input is decoded once: unreadable, empty and NaN/Inf files are left out and listed. Each
finished shard gets a sidecar ``shard-000000.json``; a shard is written to a temporary name and
renamed, so a killed run resumes by keeping every shard whose sidecar exists (for the same plan:
same file list, shard size, encoding and seed). ``OUT/index.json`` lists the shards with their
sample counts and durations: training reads the counts from it, which is what makes resuming
mid-pass cheap and exact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from pretrain.model.audio_io import AudioFileError, open_audio, read_whole, to_mono_16k
from pretrain.model.frontend import SAMPLE_RATE
from pretrain.training.data import DatasetError, list_audio

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "atst-shards"
INDEX_VERSION = 1
KEY_DIGITS = 9  # sample keys are the position in the shuffled list: 000000042


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


@dataclass(frozen=True)
class _ShardJob:
    number: int
    out: str
    plan: str
    flac16k: bool
    entries: tuple[tuple[int, str, str], ...]  # (key, path, name recorded in the sample's json)


def _encode(path: str, flac16k: bool) -> tuple[bytes, str, dict]:
    """The bytes to store for one file, their extension and the sample's metadata."""
    with open_audio(path) as f:  # first: a FIFO or an implausible header is refused before any read
        wav, rate, channels = read_whole(f, path), f.samplerate, f.channels
    data = Path(path).read_bytes()
    mono = to_mono_16k(wav, rate, path)  # also the empty and NaN/Inf checks training applies
    meta = {"seconds": wav.shape[0] / rate, "sample_rate": rate, "channels": channels}
    if not flac16k:
        return data, Path(path).suffix.lower().lstrip("."), meta
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(mono.numpy(), -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), "flac", meta


def _write_shard(job: _ShardJob) -> dict:
    from webdataset import TarWriter

    out = Path(job.out)
    name = shard_name(job.number)
    tmp = out / (name + ".tmp")
    samples, seconds, skipped = 0, 0.0, []
    with open(tmp, "wb") as stream, TarWriter(stream, encoder=False, mtime=0.0) as writer:
        for key, path, source in job.entries:
            try:
                payload, ext, meta = _encode(path, job.flac16k)
            except (AudioFileError, OSError) as err:
                skipped.append({"path": source, "reason": str(err)})
                continue
            meta["source"] = source
            writer.write({"__key__": f"{key:0{KEY_DIGITS}d}", ext: payload, "json": json.dumps(meta).encode()})
            samples += 1
            seconds += meta["seconds"]
    os.replace(tmp, out / name)  # also when every input was unreadable: shard names stay contiguous
    record = {"name": name, "plan": job.plan, "samples": samples, "seconds": seconds, "skipped": skipped}
    sidecar = out / name.replace(".tar", ".json")
    sidecar.with_suffix(".json.tmp").write_text(json.dumps(record))
    os.replace(sidecar.with_suffix(".json.tmp"), sidecar)
    return record


def write_shards(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: int,
    flac16k: bool = False,
    seed: int = 0,
    jobs: int = 1,
    progress: bool = True,
) -> dict:
    """Shard ``source`` into ``out`` (see the module docstring); returns the index written to
    ``out/index.json``. Resumes a killed run of the same plan; refuses a folder holding another's."""
    from tqdm import tqdm

    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    files = list_audio(source)
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    names = [os.path.relpath(p, root) for p in files]
    order = np.random.default_rng(seed).permutation(len(files))
    plan = hashlib.blake2b(json.dumps([names, shard_size, flac16k, seed]).encode(), digest_size=12).hexdigest()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs_todo, records = [], {}
    for number, first in enumerate(range(0, len(files), shard_size)):
        sidecar = out / shard_name(number).replace(".tar", ".json")
        if sidecar.is_file():
            record = json.loads(sidecar.read_text())
            if record.get("plan") != plan:
                raise DatasetError(
                    f"{out} holds shards of another plan (different files, --shard-size, --flac16k or "
                    "--seed); write to a new folder"
                )
            if (out / record["name"]).is_file():
                records[number] = record
                continue
        chosen = order[first : first + shard_size]
        entries = tuple((int(k), str(files[k]), names[k]) for k in chosen)
        jobs_todo.append(_ShardJob(number, str(out), plan, flac16k, entries))
    if records:
        log.info("keeping %d finished shards in %s", len(records), out)
    bar = tqdm(total=sum(len(j.entries) for j in jobs_todo), unit="file", desc="sharding", disable=not progress)
    with ProcessPoolExecutor(jobs) if jobs > 1 else _InProcess() as pool:
        for job, record in zip(jobs_todo, pool.map(_write_shard, jobs_todo), strict=True):
            records[job.number] = record
            bar.update(len(job.entries))
            bar.set_postfix(shards=len(records), skipped=sum(len(r["skipped"]) for r in records.values()))
    bar.close()
    ordered = [records[n] for n in sorted(records)]
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "plan": plan,
        "source": str(source),
        "encoding": "flac16k" if flac16k else "original",
        "shards": [{k: r[k] for k in ("name", "samples", "seconds")} for r in ordered],
        "samples": sum(r["samples"] for r in ordered),
        "seconds": sum(r["seconds"] for r in ordered),
        "skipped": [s for r in ordered for s in r["skipped"]],
    }
    (out / (INDEX_NAME + ".tmp")).write_text(json.dumps(index, indent=1))
    os.replace(out / (INDEX_NAME + ".tmp"), out / INDEX_NAME)
    return index


class _InProcess:
    """``ProcessPoolExecutor``'s ``map`` in this process (one job: no pickling, plain tracebacks)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)
