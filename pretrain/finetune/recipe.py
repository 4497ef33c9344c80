"""Settings of a fine-tuning run: the official recipe (../shared/DESIGN.md section 12) as defaults,
presets named after the official tasks' scripts (``shell/downtream/finetune/eval_*.sh``), and a
CPU-sized preset for tests and smoke runs. Every setting is a flag and a YAML key."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from pretrain.training.config import parse_setting


@dataclass
class FinetuneConfig:
    """``lr`` is the scripts' value: the peak learning rate is ``lr * total batch / 256``."""

    lr: float = 0.5
    final_lr: float = 1e-6
    epochs: int = 50
    warmup_epochs: int = 5
    batch_size: int = 128  # per device (official: 128 x 4 GPUs)
    layer_decay: float = 0.75  # block i of D gets layer_decay ** (D - i); embeddings ** D; final norm ** 1
    drop_path: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_grad: float = 3.0
    mixup_alpha: float = 0.5  # label mixup lambda ~ Beta(alpha, alpha); 0 turns mixup off
    mixup_memory: int = 5000  # FIFO bank of past (mel, label) pairs
    rrc: bool = True  # Random Resize Crop after mixup (virtual 1.0 x F, 1.5 x T)
    max_seconds: float = 12.0  # centre crop of every clip, train and test (official)
    freeze: bool = False  # frozen baseline: all blocks' features into the same head, encoder untouched
    baseline: bool = False  # also run the frozen baseline and report both
    frozen_lr: float = 0.1
    frozen_epochs: int = 100
    frozen_batch_size: int = 1024
    seed: int = 0
    devices: str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    log_every: int = 10
    resume: str = "auto"  # "auto": each round's last.ckpt if there is one; "never"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "as20k": {"lr": 1.0, "epochs": 200, "warmup_epochs": 5, "mixup_alpha": 0.5},
    "fsd50k": {"lr": 0.5, "epochs": 100, "warmup_epochs": 5, "mixup_alpha": 0.5},
    "spcv2": {"lr": 0.5, "epochs": 50, "warmup_epochs": 5, "mixup_alpha": 0.5},
    "us8k": {"lr": 2e-3, "epochs": 50, "warmup_epochs": 5, "mixup_alpha": 0.5},
    "nsynth": {"lr": 5e-4, "epochs": 50, "warmup_epochs": 5, "mixup_alpha": 0.5},
    "voxceleb1": {"lr": 0.1, "epochs": 50, "warmup_epochs": 5, "mixup_alpha": 0.0},
    # this project's: minutes on two CPU cores
    "tiny": {
        "lr": 0.5,
        "epochs": 12,
        "warmup_epochs": 1,
        "batch_size": 8,
        "mixup_memory": 64,
        "frozen_epochs": 30,
        "frozen_batch_size": 32,
        "log_every": 1,
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="any checkpoint the package reads")
    parser.add_argument("--task", type=Path, required=True, help="a HEAR 2021 task folder (scene task)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings (over the preset)")
    for f in fields(FinetuneConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar=f.name.upper())


def from_arguments(args: argparse.Namespace) -> FinetuneConfig:
    """Preset, then the YAML file, then command-line flags."""
    values: dict[str, Any] = dict(PRESETS[args.preset])
    by_name = {f.name: f for f in fields(FinetuneConfig)}
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        unknown = sorted(set(loaded) - set(by_name))
        if unknown:
            raise ValueError(f"unknown settings in {args.config}: {unknown}")
        values.update(loaded)
    for name, f in by_name.items():
        text = getattr(args, name, None)
        if text is not None:
            values[name] = parse_setting(f, text)
    config = FinetuneConfig(**values)
    for name in ("epochs", "batch_size", "frozen_epochs", "frozen_batch_size", "mixup_memory"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.warmup_epochs < config.epochs:
        raise ValueError(f"warmup_epochs must be in 0..epochs-1, got {config.warmup_epochs}")
    if not 0 < config.layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {config.layer_decay}")
    return config
