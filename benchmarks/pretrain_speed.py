"""Pretraining speed of both recipes: the data pipeline per core and training steps per second.

    .venv/bin/python benchmarks/pretrain_speed.py [--samples 256] [--out FILE.md]

Data pipeline (one thread each, same process, same files): the package decodes the crops of
each clip in the loader (two 6 s crops for ATST-Clip, one 10 s crop for ATST-Frame) and makes
the views batched (mel, Mixup, Random Resize Crop and, for Frame, the span masks, as on the
training device); the reference does the whole chain one clip at a time as the official transforms
do (whole file read and resampled, random crops, torchaudio mel per crop, list-bank Mixup, canvas
crop + interpolate, fairseq's span sampler; pretrain/reference.py).
Training: optimizer steps per second of the real LightningModule step (views, student and teacher
forward, backward, AdamW, EMA) on a synthetic batch, for the tiny and small encoders of each recipe.
Data sources (``--sections sources``): samples per second of one loader worker reading two 6 s crops
per clip from tar shards (``ShardStream``) against the folder reader (``CropDataset``), short and
long clips; and the start-up (listing to first batch, fresh and resumed mid-pass) on a collection of
200,000 entries: a CSV manifest for the folder reader, an index of 200 shards x 1,000 for the shards
(the entries repeat a few real files).
Runs in the harness stack (the reference uses torchaudio).

    .venv/bin/python benchmarks/pretrain_speed.py --sections sources --out benchmarks/data_sources_cpu.md
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from measure import machine, write_report

from pretrain.model.audio_io import load_audio
from pretrain.reference import (
    OfficialMixup,
    official_frame_views,
    official_mel,
    official_random_resize_crop,
)
from pretrain.training.config import PRESETS, PretrainConfig
from pretrain.training.data import CropDataset, SampleKey, StepSampler, collate_crops, list_audio
from pretrain.training.lightning_module import ATSTPretraining
from pretrain.training.recipes import RECIPES
from pretrain.training.shard_stream import ShardStream, resolve_shards
from pretrain.training.shard_writer import INDEX_NAME, write_shards
from pretrain.training.synthetic import make_corpus

CROPS = {"clip": 6.0, "frame": 10.0}  # the official crop lengths


def official_worker(method: str, wav: torch.Tensor, n: int, mixups: list[OfficialMixup]) -> None:
    """One clip through the official per-clip transform of the recipe."""
    crops = 2 if method == "clip" else 1
    for view in range(crops):
        offset = random.randint(0, max(len(wav) - n, 0))
        crop = torch.nn.functional.pad(wav[offset : offset + n], (0, max(n - len(wav), 0)))
        mel = official_mel(crop)[None]
        if method == "clip":
            official_random_resize_crop(mixups[view](mel))
        else:
            official_frame_views(mel, mixups[0])


def pipeline_rates(method: str, files: list[Path], n_samples: int, batch: int) -> dict[str, float]:
    """Samples per second of: the package's loader worker (decoding only; the views are made on
    the training device), the package's whole chain on this CPU, and the official-style worker.
    The three alternate batch by batch, so slow drifts of a shared machine hit all of them."""
    crop_seconds = CROPS[method]
    dataset = CropDataset(files, crop_seconds, RECIPES[method].n_crops)
    keys = [SampleKey(i % len(files), i) for i in range(n_samples)]
    config = PretrainConfig(family=method, arch="tiny", crop_seconds=crop_seconds, mixup_memory=2000)
    module = ATSTPretraining(config.to_dict())
    mixups = [OfficialMixup(), OfficialMixup()]
    n = int(crop_seconds * 16000)
    seconds = {"worker": 0.0, "augment": 0.0, "reference": 0.0}
    warm = False
    # one untimed batch first: one-off costs (memory banks, resampling kernels, allocator) are not throughput
    for first in [0, *range(0, n_samples, batch)]:
        group = keys[first : first + batch]
        spent = {}
        start = time.perf_counter()
        wavs = collate_crops([dataset[k] for k in group])["wavs"]
        spent["worker"] = time.perf_counter() - start
        start = time.perf_counter()
        module.make_views(wavs)
        spent["augment"] = time.perf_counter() - start
        start = time.perf_counter()
        for key in group:
            official_worker(method, load_audio(files[key.index]), n, mixups)  # whole clip, mono, resampled
        spent["reference"] = time.perf_counter() - start
        if warm:
            for name, value in spent.items():
                seconds[name] += value
        warm = True
    return {
        "worker": n_samples / seconds["worker"],
        "chain": n_samples / (seconds["worker"] + seconds["augment"]),
        "reference": n_samples / seconds["reference"],
    }


def train_steps_per_second(preset: str, arch: str, batch: int, crop_seconds: float, steps: int) -> float:
    config = PretrainConfig(**{**PRESETS[preset], "arch": arch, "batch_size": batch, "crop_seconds": crop_seconds})
    module = ATSTPretraining(config.to_dict())
    optimizer = module.configure_optimizers()
    wavs = 0.1 * torch.randn(batch, RECIPES[config.family].n_crops, int(crop_seconds * 16000))

    def step():
        loss, _, _ = module.model(*module.make_views(wavs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.model.update_teacher(0.99)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def _shard_stream(shards, batch: int, start: int = 0, end: int = 10**9) -> ShardStream:
    return ShardStream(
        shards, crop_seconds=6.0, n_crops=2, batch_size=batch, seed=0, start_batch=start, end_batch=end
    )


def source_rates(files: list[Path], shard_dir: Path, n_samples: int, batch: int = 32) -> dict[str, float]:
    """Samples per second of one loader worker (this thread): folder reader vs shards, alternating
    batch by batch; the same clips, crops of the Clip recipe."""
    dataset = CropDataset(files, 6.0, 2)
    sampler = StepSampler(len(files), batch, seed=0, end_batch=10**9)
    stream = iter(_shard_stream(resolve_shards(str(shard_dir)), batch))
    seconds = {"folder": 0.0, "shards": 0.0}
    for k in range(-1, n_samples // batch):  # one untimed batch each first
        start = time.perf_counter()
        collate_crops([dataset[key] for key in sampler.batch(k + 1)])
        folder = time.perf_counter() - start
        start = time.perf_counter()
        next(stream)
        shards = time.perf_counter() - start
        if k >= 0:
            seconds["folder"] += folder
            seconds["shards"] += shards
    return {name: n_samples // batch * batch / value for name, value in seconds.items()}


def startup_seconds(root: Path, entries: int = 200_000, per_shard: int = 1000) -> dict[str, float]:
    """Listing to first batch on ``entries`` entries, fresh and resumed at batch 3000 (mid-pass)."""
    import soundfile

    clips = root / "startup_clips"
    clips.mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(50):
        soundfile.write(clips / f"clip{i:03d}.wav", (0.1 * torch.randn(8000, generator=rng)).numpy(), 16000)
    names = sorted(p.name for p in clips.iterdir())
    manifest = clips / "manifest.csv"
    manifest.write_text("path\n" + "".join(f"{names[i % len(names)]}\n" for i in range(entries)))
    shard_dir = root / "startup_shards"
    one = write_shards(clips, root / "one_shard", shard_size=len(names), progress=False)["shards"][0]
    shard_dir.mkdir()
    index = {"format": "atst-shards", "version": 1, "shards": []}
    for n in range(entries // per_shard):  # 200 names for one real shard; the index says 1,000 samples each
        (shard_dir / f"shard-{n:06d}.tar").symlink_to(root / "one_shard" / one["name"])
        index["shards"].append({"name": f"shard-{n:06d}.tar", "samples": one["samples"], "seconds": one["seconds"]})
    (shard_dir / INDEX_NAME).write_text(__import__("json").dumps(index))
    out = {}
    for resumed, start in (("fresh", 0), ("resumed", 3000)):
        t0 = time.perf_counter()
        files = list_audio(manifest)
        dataset = CropDataset(files, 6.0, 2)
        sampler = StepSampler(len(files), 32, seed=0, start_batch=start, end_batch=start + 1)
        collate_crops([dataset[key] for key in next(iter(sampler))])
        out[f"folder {resumed}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        next(iter(_shard_stream(resolve_shards(str(shard_dir)), 32, start, start + 1)))
        out[f"shards {resumed}"] = time.perf_counter() - t0
    return out


def sources_section(samples: int) -> list[str]:
    lines = ["", "| one loader worker, 1 thread, two 6 s crops per clip | folder samples/s | shards samples/s "
             "| shards vs folder |", "|---|---|---|---|"]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in (("short clips, 1-2 s", (1.0, 2.0)), ("long clips, 10 s (AudioSet)", (10.0, 10.0))):
            folder = Path(tmp) / label.split(",")[0].replace(" ", "_")
            files = make_corpus(folder, n_clips=64, seconds=seconds)
            write_shards(folder, Path(str(folder) + "_shards"), shard_size=16, progress=False)
            rates = source_rates(files, Path(str(folder) + "_shards"), samples)
            lines.append(f"| {label} | {rates['folder']:.1f} | {rates['shards']:.1f} "
                         f"| {rates['shards'] / rates['folder']:.2f}x |")
            print(lines[-1], flush=True)
        startup = startup_seconds(Path(tmp))
    lines += ["", "| start-up on 200,000 entries (listing to first batch of 32) | folder (CSV manifest) | shards "
              "(index of 200 x 1,000) | shards vs folder |", "|---|---|---|---|"]
    for when in ("fresh", "resumed"):
        label = "fresh run" if when == "fresh" else "resumed at batch 3000 (mid-pass)"
        folder, shards = startup[f"folder {when}"], startup[f"shards {when}"]
        lines.append(f"| {label} | {folder:.2f} s | {shards:.2f} s | {folder / shards:.1f}x faster |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sections", default="pipeline,training", help="any of pipeline, training, sources")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    lines = [f"Machine: {machine()}, {threads} threads available", ""]
    if "sources" in sections:
        lines += sources_section(args.samples)
        torch.set_num_threads(threads)
    labels = {
        "worker": "package loader worker (decode; the views are made batched on the device)",
        "chain": "package, decode + batched views on this CPU",
        "reference": "reference worker (official per-clip chain)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = make_corpus(tmp, n_clips=32, seconds=(4.0, 10.0))
        torch.set_num_threads(1)
        for method in ("clip", "frame") if "pipeline" in sections else ():
            crops = "two 6 s crops" if method == "clip" else "one 10 s crop, span masks"
            lines += ["", f"| ATST-{method.capitalize()} data pipeline, 1 thread, {crops} per clip | samples/s "
                      "| vs reference |", "|---|---|---|"]
            rates = pipeline_rates(method, files, args.samples, 32)
            for key, label in labels.items():
                lines.append(f"| {label} | {rates[key]:.1f} | {rates[key] / rates['reference']:.2f}x |")
                print(lines[-1], flush=True)
    torch.set_num_threads(threads)
    if "training" in sections:
        lines += ["", f"| training ({threads} threads) | batch | steps/s | clips/s |", "|---|---|---|---|"]
    runs = (("tiny", "tiny", 16, 2.0, 5), ("tiny", "small", 8, 6.0, 2), ("frame-tiny", "tiny", 16, 4.0, 5),
            ("frame-tiny", "small", 8, 10.0, 2))
    for preset, arch, batch, crop_seconds, steps in runs if "training" in sections else ():
        method = PRESETS[preset].get("family", "clip")
        rate = train_steps_per_second(preset, arch, batch, crop_seconds, steps)
        lines.append(f"| ATST-{method.capitalize()} {arch}, {crop_seconds:g} s crops | {batch} | {rate:.2f} "
                     f"| {rate * batch:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines[:1]))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
