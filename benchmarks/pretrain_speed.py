"""Pretraining speed: the data pipeline per core and training steps per second.

    .venv/bin/python benchmarks/pretrain_speed.py [--samples 256] [--out FILE.md]

Data pipeline (one thread each, same process, same files): the package decodes two crops per
clip in the loader and runs mel + Mixup + Random Resize Crop batched (as on the training
device); the reference does the whole chain one clip at a time as the official transform does
(whole file read and resampled, random crops, torchaudio mel per crop, list-bank Mixup, canvas crop
+ interpolate; tests/reference_official.py).
Training: optimizer steps per second of the real LightningModule step (augmentation, student and
teacher forward, backward, AdamW, EMA) on a synthetic batch, for the tiny and small encoders.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_official import OfficialMixup, official_mel, official_random_resize_crop  # noqa: E402

from pretrain.model.audio_io import load_audio  # noqa: E402
from pretrain.training.config import PRESETS, PretrainConfig  # noqa: E402
from pretrain.training.data import SampleKey, TwoCropDataset, collate_crops  # noqa: E402
from pretrain.training.lightning_module import ATSTPretraining  # noqa: E402
from pretrain.training.synthetic import make_corpus  # noqa: E402


def pipeline_rates(files: list[Path], n_samples: int, batch: int, train_len: float) -> dict[str, float]:
    """Samples per second of: the package's loader worker (decoding only; the augmentations run on
    the training device), the package's whole chain on this CPU, and the official-style worker.
    The three alternate batch by batch, so slow drifts of a shared machine hit all of them."""
    dataset = TwoCropDataset(files, train_len)
    keys = [SampleKey(i % len(files), i) for i in range(n_samples)]
    module = ATSTPretraining(PretrainConfig(arch="tiny", train_len=train_len, mixup_memory=2000).to_dict())
    mixups = [OfficialMixup(), OfficialMixup()]
    n = int(train_len * 16000)
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
        module.views(wavs)
        spent["augment"] = time.perf_counter() - start
        start = time.perf_counter()
        for key in group:
            wav = load_audio(files[key.index])  # whole clip, mono, resampled
            for view in range(2):
                offset = random.randint(0, max(len(wav) - n, 0))
                crop = torch.nn.functional.pad(wav[offset : offset + n], (0, max(n - len(wav), 0)))
                official_random_resize_crop(mixups[view](official_mel(crop)[None]))
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


def train_steps_per_second(arch: str, batch: int, train_len: float, steps: int) -> float:
    config = PretrainConfig(**{**PRESETS["tiny"], "arch": arch, "batch_size": batch, "train_len": train_len})
    module = ATSTPretraining(config.to_dict())
    optimizer = module.configure_optimizers()
    wavs = 0.1 * torch.randn(batch, 2, int(train_len * 16000))

    def step():
        view_a, view_b = module.views(wavs)
        loss, _, _ = module.model(view_a, view_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.model.update_teacher(0.99)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    lines = [f"Machine: {platform.machine()}, {threads} threads available, torch {torch.__version__}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        files = make_corpus(tmp, n_clips=32, seconds=(4.0, 10.0))
        torch.set_num_threads(1)
        lines += ["| data pipeline, 1 thread, two 6 s crops per clip | samples/s | vs reference |", "|---|---|---|"]
        rates = pipeline_rates(files, args.samples, 32, 6.0)
        labels = {
            "worker": "package loader worker (decode; mel, Mixup, RRC run batched on the device)",
            "chain": "package, decode + batched mel, Mixup, RRC on this CPU",
            "reference": "reference worker (official per-clip chain)",
        }
        for key, label in labels.items():
            lines.append(f"| {label} | {rates[key]:.1f} | {rates[key] / rates['reference']:.2f}x |")
            print(lines[-1], flush=True)
    torch.set_num_threads(threads)
    lines += ["", f"| training ({threads} threads) | batch | steps/s | clips/s |", "|---|---|---|---|"]
    for arch, batch, train_len, steps in (("tiny", 16, 2.0, 5), ("small", 8, 6.0, 2)):
        rate = train_steps_per_second(arch, batch, train_len, steps)
        lines.append(f"| {arch}, {train_len:g} s crops | {batch} | {rate:.2f} | {rate * batch:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines[:1]))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
