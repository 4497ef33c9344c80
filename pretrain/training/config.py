"""Pretraining configuration: presets reproducing the official runs, YAML files, CLI overrides.

One configuration serves both recipes; ``method`` picks ATST-Clip or ATST-Frame and the settings
that only one of them reads say so.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run. ``batch_size`` is per device; the peak learning rate is
    ``base_lr * batch_size * devices * num_nodes * accumulate_grad_batches / 256``."""

    method: str = "clip"  # "clip": ATST-Clip; "frame": ATST-Frame
    arch: str = "small"
    data: str = ""  # a folder of wav/flac/ogg files, a CSV/TSV manifest with a "path" column, or shards
    shard_index: str = ""  # the shards' index.json where it is not beside them (pipe: URLs)
    shuffle_buffer: int = 1000  # shards: samples shuffled together per loader stream (held encoded)
    run_dir: str = "runs/atst"
    crop_seconds: float = 6.0  # the official train_len (Clip) / anchor_len (Frame)
    batch_size: int = 384
    base_lr: float = 5e-4
    final_lr: float = 1e-6
    warmup_steps: int = 1300
    max_steps: int = 39100
    ema: float = 0.99
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    mixup_ratio: float = 0.4
    mixup_memory: int = 2000
    virtual_crop_scale: float = 1.5  # Clip: canvas width of Random Resize Crop (Frame: 1, fixed)
    freq_scale: tuple[float, float] = (0.6, 1.5)
    time_scale: tuple[float, float] = (0.6, 1.5)  # Clip only (Frame keeps the time axis)
    mask_prob: float = 0.65  # Frame: span starts per token (fairseq mask_prob; about half the tokens end masked)
    mask_span: int = 5  # Frame: tokens per masked span
    min_spans: int = 2  # Frame: at least this many spans per clip
    drop_path: float = 0.1  # stochastic depth of the encoders (official default of AST and FrameAST)
    teacher_mode: str = "train"  # "train" as officially (drop path, batch-statistics BN), or "eval"
    devices: str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"  # "bf16-mixed" for bfloat16 autocast
    accumulate_grad_batches: int = 1
    num_workers: int = 4
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 0
    resume: str = "auto"  # "auto": the run's last.ckpt if there is one; "never"; or a checkpoint path
    probe: str = ""  # HEAR scene task folders, comma-separated: the online probe (pretrain.training.probe)
    probe_every: int = 0  # optimizer steps between probes; 0: a fifth of max_steps
    log_data_order: bool = False  # every step's samples to data_order.jsonl (rank r > 0: data_order.rank{r}.jsonl)

    def probe_tasks(self) -> list[str]:
        """The task folders of ``probe``, in order."""
        return [task for task in self.probe.split(",") if task]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# YAML keys accepted for a setting under its official name
ALIASES = {"train_len": "crop_seconds", "anchor_len": "crop_seconds"}

# Runs on two CPU cores in minutes: this project's, for tests, demos and smoke runs.
_CPU_SIZED = {
    "arch": "tiny",
    "batch_size": 16,
    "base_lr": 4e-3,
    "warmup_steps": 10,
    "max_steps": 120,
    "ema": 0.99,
    "mixup_memory": 256,
    "drop_path": 0.0,
    "devices": "1",
    "accelerator": "cpu",
    "num_workers": 1,
    "checkpoint_every": 40,
    "log_every": 5,
}

PRESETS: dict[str, dict[str, Any]] = {
    # official ATST-Clip small (audiossl atst/train_small.sh): 4 GPUs x 384, base lr 5e-4, 1,300 warm-up,
    # 39,100 steps, EMA 0.99; crops of 6 s as in the paper (the script says 9)
    "small": {},
    # official ATST-Clip base: 6 GPUs x 256, base lr 2e-4, 318,000 steps, EMA 0.9995, full AudioSet
    "base": {
        "arch": "base",
        "batch_size": 256,
        "base_lr": 2e-4,
        "warmup_steps": 15860,
        "max_steps": 318000,
        "ema": 0.9995,
    },
    "tiny": {**_CPU_SIZED, "crop_seconds": 2.0},
    # tiny for about 8 minutes on two cores, with a slow teacher: the settings that learn on this scale
    # (README "Does pretraining learn?": with EMA 0.99 the teacher follows the student within ~100 steps
    # and the embeddings collapse to a few directions; at 0.998 it keeps its random-init richness longer)
    "tiny-long": {
        **_CPU_SIZED,
        "crop_seconds": 2.0,
        "max_steps": 1500,
        "warmup_steps": 50,
        "ema": 0.998,
        "checkpoint_every": 500,
        "log_every": 25,
    },
    # official ATST-Frame small (atstframe/train_small.sh): 4 GPUs x 256, base lr 4e-4, 1,950 warm-up,
    # 58,500 steps, EMA 0.997, 10 s crops, spans of 5 at 0.65
    "frame-small": {
        "method": "frame",
        "crop_seconds": 10.0,
        "batch_size": 256,
        "base_lr": 4e-4,
        "warmup_steps": 1950,
        "max_steps": 58500,
        "ema": 0.997,
    },
    # official ATST-Frame base (atstframe/train_base.sh): 7 GPUs x 144, base lr 8e-5, 19,900 warm-up,
    # 398,000 steps, EMA 0.9996, all of AudioSet-2M
    "frame-base": {
        "method": "frame",
        "arch": "base",
        "crop_seconds": 10.0,
        "batch_size": 144,
        "base_lr": 8e-5,
        "warmup_steps": 19900,
        "max_steps": 398000,
        "ema": 0.9996,
    },
    "frame-tiny": {**_CPU_SIZED, "method": "frame", "crop_seconds": 4.0},
}
DEFAULT_PRESET = {"clip": "small", "frame": "frame-small"}


def parse_setting(field: dataclasses.Field, text: str) -> Any:
    """A flag's text as the type of its dataclass field (tuples as "low,high", booleans as true/false)."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind.startswith("tuple"):
        low, high = (float(v) for v in text.split(","))
        return (low, high)
    if kind == "bool":
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"{field.name}: expected true/false, got {text!r}")
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per setting, plus ``--preset`` and ``--config`` (YAML)."""
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="starting values (default: the method's official small)"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings (over the preset)")
    for f in fields(PretrainConfig):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"(default from the preset; {f.type})",
        )


def from_arguments(args: argparse.Namespace) -> PretrainConfig:
    """Preset, then the YAML file, then command-line flags."""
    preset = args.preset or DEFAULT_PRESET.get(getattr(args, "method", None) or "clip")
    if preset is None:
        raise ValueError(f"method must be one of {sorted(DEFAULT_PRESET)}, got {args.method!r}")
    values: dict[str, Any] = dict(PRESETS[preset])
    by_name = {f.name: f for f in fields(PretrainConfig)}
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        loaded = {ALIASES.get(k, k): v for k, v in loaded.items()}
        unknown = sorted(set(loaded) - set(by_name))
        if unknown:
            raise ValueError(f"unknown settings in {args.config}: {unknown}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in loaded.items()})
    for name, f in by_name.items():
        text = getattr(args, name, None)
        if text is not None:
            values[name] = parse_setting(f, text)
    config = PretrainConfig(**values)
    validate(config)
    return config


def validate(config: PretrainConfig) -> None:
    from pretrain.model.encoder import ARCHS

    if config.method not in DEFAULT_PRESET:
        raise ValueError(f"method must be one of {sorted(DEFAULT_PRESET)}, got {config.method!r}")
    if config.arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {config.arch!r}")
    if not 0.5 <= config.crop_seconds <= 10.0:
        raise ValueError(f"crop_seconds must be in 0.5..10 s (250 positions), got {config.crop_seconds}")
    if config.teacher_mode not in ("train", "eval"):
        raise ValueError(f"teacher_mode must be 'train' or 'eval', got {config.teacher_mode!r}")
    if not 0.0 <= config.drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {config.drop_path}")
    if config.method == "frame":
        n_tokens = int(config.crop_seconds * 100 + 1) // 4
        if not 0.0 < config.mask_prob < 1.0 or config.mask_span < 1 or config.min_spans < 1:
            raise ValueError("mask_prob must be in (0, 1), mask_span and min_spans >= 1")
        if n_tokens - config.mask_span <= config.min_spans:
            raise ValueError(
                f"a {config.crop_seconds} s crop ({n_tokens} tokens) is too short for spans of {config.mask_span}"
            )
    if config.max_steps <= config.warmup_steps:
        raise ValueError(f"max_steps ({config.max_steps}) must exceed warmup_steps ({config.warmup_steps})")
    if config.probe_every < 0:
        raise ValueError(f"probe_every must be >= 0, got {config.probe_every}")
    for task in config.probe_tasks():
        if not (Path(task) / "task_metadata.json").is_file():
            raise ValueError(f"probe task {task!r} is not a HEAR task folder (no task_metadata.json)")
    positive = ("batch_size", "accumulate_grad_batches", "checkpoint_every", "num_nodes", "log_every", "shuffle_buffer")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
