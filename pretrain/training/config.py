"""Pretraining configuration: presets reproducing the official runs, YAML files, CLI overrides.

One configuration serves both recipes; ``family`` picks ATST-Clip or ATST-Frame and the settings
that only one of them reads say so. Every setting is a flag (``--help`` shows what it is, its unit,
range and official values) and a YAML key.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pretrain.model.encoder import ARCHS
from pretrain.runs import settings
from pretrain.runs.settings import check_value, from_plain, setting, to_plain
from pretrain.training.recipes import DEFAULT_PRESET, OFFICIAL_PRESETS, PRESETS, RECIPES
from pretrain.training.sources import SOURCES

ARCH_NAMES = tuple(sorted(ARCHS))


FAMILY_NAMES = tuple(RECIPES)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")  # Lightning's
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run (the defaults are the official ATST-Clip small run).
    ``batch_size`` is per device; the peak learning rate is
    ``base_lr * batch_size * devices * num_nodes * accumulate_grad_batches / 256``."""

    family: str = setting(
        "clip", "ATST family: clip (ATST-Clip: two crops, CLS outputs) or frame (ATST-Frame: masked frame tokens)",
        choices=FAMILY_NAMES, official=False, alias="method",
    )
    arch: str = setting("small", "encoder size", choices=ARCH_NAMES)
    data: str = setting(
        "", "training audio: a folder of wav/flac/ogg files, a CSV/TSV manifest with a 'path' column, or "
        "WebDataset shards (a folder of .tar, a brace pattern, pipe: URLs)", official=False,
    )
    data_format: str = setting(
        "auto", "how --data is read: files (a folder or CSV/TSV manifest), shards (WebDataset tars), or auto: "
        "shards for pipe:, {..}, .tar, :: and folders of .tar, else files", choices=("auto", *SOURCES),
        official=False,
    )
    shard_index: str = setting("", "the shards' index.json where it is not beside them (pipe: URLs)", official=False)
    shuffle_buffer: int = setting(
        1000, "shards: samples shuffled together per loader stream (held encoded in memory)", unit="samples", low=1,
        official=False,
    )
    run_dir: str = setting("runs/atst", "run folder: checkpoints, logs, curves, exported teacher", official=False)
    crop_seconds: float = setting(
        6.0, "length of each training crop (the official train_len of Clip, anchor_len of Frame)", unit="seconds",
        low=0.5, high=10.0,
    )
    batch_size: int = setting(384, "clips per device and step", unit="clips", low=1)
    base_lr: float = setting(
        5e-4, "peak learning rate for a total batch of 256 (peak = base_lr x total batch / 256), after linear "
        "warm-up, then cosine to final_lr", low=0.0, low_open=True,
    )
    final_lr: float = setting(1e-6, "learning rate at max_steps", low=0.0)
    warmup_steps: int = setting(1300, "linear learning-rate warm-up", unit="optimizer steps", low=0)
    max_steps: int = setting(39100, "length of the run and of its schedules", unit="optimizer steps", low=1)
    ema: float = setting(0.99, "teacher EMA momentum at step 0, cosine to 1 at max_steps", low=0.0, high=1.0)
    weight_decay_start: float = setting(0.04, "AdamW weight decay at step 0 (cosine to the end value)", low=0.0)
    weight_decay_end: float = setting(0.4, "AdamW weight decay at max_steps", low=0.0)
    mixup_ratio: float = setting(
        0.4, "Mixup: the mixed-in share is ratio x U(0, 1), in the log-mixup-exp form", low=0.0, high=1.0
    )
    mixup_memory: int = setting(2000, "Mixup: FIFO bank of earlier clips to mix in", unit="clips", low=1)
    virtual_crop_scale: float = setting(
        1.5, "Clip: Random Resize Crop canvas width, times the crop (Frame: 1, fixed)", low=1.0
    )
    freq_scale: tuple[float, float] = setting(
        (0.6, 1.5), "Random Resize Crop: range of the frequency scale", unit="LOW,HIGH", low=0.0, low_open=True
    )
    time_scale: tuple[float, float] = setting(
        (0.6, 1.5), "Clip: Random Resize Crop range of the time scale (Frame keeps the time axis)", unit="LOW,HIGH",
        low=0.0, low_open=True,
    )
    mask_prob: float = setting(
        0.65, "Frame: span starts per token (fairseq mask_prob; about half the tokens end masked)",
        low=0.0, high=1.0, low_open=True, high_open=True,
    )
    mask_span: int = setting(5, "Frame: tokens per masked span", unit="tokens", low=1)
    min_spans: int = setting(2, "Frame: masked spans per clip, at least", low=1)
    drop_path: float = setting(
        0.1, "stochastic depth of the encoders (linspace to this over the blocks)", low=0.0, high=1.0, high_open=True
    )
    teacher_mode: str = setting(
        "train", "teacher's mode: train as officially (drop path, batch-statistics BN) or eval",
        choices=("train", "eval"),
    )
    devices: str = setting("auto", "devices per node: auto, a count, or indices such as 0,1", official=False)
    num_nodes: int = setting(1, "machines of the run", low=1, official=False)
    accelerator: str = setting("auto", "Lightning accelerator", choices=ACCELERATORS, official=False)
    strategy: str = setting("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...", official=False)
    precision: str = setting("32-true", "Lightning precision (bf16-mixed: bfloat16 autocast)", choices=PRECISIONS)
    accumulate_grad_batches: int = setting(1, "batches per optimizer step", low=1, official=False)
    num_workers: int = setting(4, "data loader processes per device", low=0, official=False)
    checkpoint_every: int = setting(1000, "checkpoint interval", unit="optimizer steps", low=1, official=False)
    keep_checkpoints: int = setting(3, "step checkpoints kept beside last.ckpt (-1: all)", low=-1, official=False)
    log_every: int = setting(50, "logging interval", unit="optimizer steps", low=1, official=False)
    seed: int = setting(0, "seeds the weights, the sample order, crops, augmentations and masks", official=False)
    resume: str = setting(
        "auto", "auto: continue from the run's last.ckpt if there is one; never; or a checkpoint path", official=False
    )
    probe: str = setting(
        "", "HEAR scene task folders, comma-separated: the online probe (k-NN / linear accuracy, effective rank)",
        official=False,
    )
    probe_every: int = setting(0, "probe interval; 0: a fifth of max_steps", unit="optimizer steps", low=0,
                               official=False)
    log_data_order: bool = setting(
        False, "write every step's samples to data_order.jsonl (rank r > 0: data_order.rank{r}.jsonl)", official=False
    )

    def probe_tasks(self) -> list[str]:
        """The task folders of ``probe``, in order."""
        return [task for task in self.probe.split(",") if task]

    def to_dict(self) -> dict[str, Any]:
        """Plain types (pairs as lists): the checkpoint's hyper-parameters."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        """The inverse of ``to_dict``; ``method`` (this package's name for ``family`` before 0.2) accepted."""
        values = dict(values)
        if "method" in values:
            values.setdefault("family", values.pop("method"))
        return from_plain(cls, values)


# YAML keys accepted for a setting under its official name
ALIASES = {"train_len": "crop_seconds", "anchor_len": "crop_seconds", "method": "family"}



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per setting, plus ``--preset`` and ``--config`` (YAML)."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="starting values of every setting: the official runs (small, base, frame-small, frame-base) or this "
        "project's CPU-sized ones (tiny, tiny-long, frame-tiny); default: the family's official small",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings, applied over the preset")
    settings.add_arguments(parser, PretrainConfig, PRESETS, OFFICIAL_PRESETS)


def from_arguments(args: argparse.Namespace) -> PretrainConfig:
    """Preset, then the YAML file, then command-line flags; the result validated."""
    preset = args.preset or DEFAULT_PRESET[getattr(args, "family", None) or "clip"]
    config = settings.from_arguments(args, PretrainConfig, PRESETS, preset, ALIASES)
    validate(config)
    return config


def validate(config: PretrainConfig) -> None:
    """What the fields' own ranges cannot say: settings that depend on each other, and the probe's tasks.
    Each value's type, choices and range come from its field (``pretrain.runs.settings.check_value``)."""
    for f in fields(config):
        check_value(f, getattr(config, f.name))
    RECIPES[config.family].check(config)
    if config.max_steps <= config.warmup_steps:
        raise ValueError(f"max_steps ({config.max_steps}) must exceed warmup_steps ({config.warmup_steps})")
    for task in config.probe_tasks():
        if not (Path(task) / "task_metadata.json").is_file():
            raise ValueError(f"probe task {task!r} is not a HEAR task folder (no task_metadata.json)")
