"""Pretraining configuration: presets reproducing the official runs, YAML files, CLI overrides."""

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

    arch: str = "small"
    data: str = ""  # a folder of wav/flac/ogg files, or a CSV/TSV manifest with a "path" column
    run_dir: str = "runs/atst"
    train_len: float = 6.0
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
    virtual_crop_scale: float = 1.5
    freq_scale: tuple[float, float] = (0.6, 1.5)
    time_scale: tuple[float, float] = (0.6, 1.5)
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
    log_data_order: bool = False  # write the sample indices of every step to data_order.jsonl

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


PRESETS: dict[str, dict[str, Any]] = {
    # official ATST-Clip small: 4 GPUs x 384, 39,100 steps (train_len 6 as in the paper)
    "small": {},
    # official base: 6 GPUs x 256, base_lr 2e-4, 318,000 steps, EMA 0.9995, full AudioSet
    "base": {
        "arch": "base",
        "batch_size": 256,
        "base_lr": 2e-4,
        "warmup_steps": 15860,
        "max_steps": 318000,
        "ema": 0.9995,
    },
    # this project's CPU-sized run: minutes on two cores
    "tiny": {
        "arch": "tiny",
        "train_len": 2.0,
        "batch_size": 16,
        "base_lr": 4e-3,
        "warmup_steps": 10,
        "max_steps": 120,
        "ema": 0.99,
        "mixup_memory": 256,
        "devices": "1",
        "accelerator": "cpu",
        "num_workers": 1,
        "checkpoint_every": 40,
        "log_every": 5,
    },
}


def _parse(field: dataclasses.Field, text: str) -> Any:
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
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="starting values")
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
    values: dict[str, Any] = dict(PRESETS[args.preset])
    by_name = {f.name: f for f in fields(PretrainConfig)}
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        unknown = sorted(set(loaded) - set(by_name))
        if unknown:
            raise ValueError(f"unknown settings in {args.config}: {unknown}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in loaded.items()})
    for name, f in by_name.items():
        text = getattr(args, name, None)
        if text is not None:
            values[name] = _parse(f, text)
    config = PretrainConfig(**values)
    validate(config)
    return config


def validate(config: PretrainConfig) -> None:
    from pretrain.model.encoder import ARCHS

    if config.arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {config.arch!r}")
    if not 0.5 <= config.train_len <= 10.0:
        raise ValueError(f"train_len must be in 0.5..10 s, got {config.train_len}")
    if config.max_steps <= config.warmup_steps:
        raise ValueError(f"max_steps ({config.max_steps}) must exceed warmup_steps ({config.warmup_steps})")
    for name in ("batch_size", "accumulate_grad_batches", "checkpoint_every", "num_nodes", "log_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
