"""Settings of a fine-tuning run: the official recipe (audiossl
``methods/atst/downstream/``, docs/finetuning.md) as defaults,
presets named after the official tasks' scripts (``shell/downtream/finetune/eval_*.sh``), and a
CPU-sized preset for tests and smoke runs. Every setting is a flag (``--help`` says what it is, its unit,
range and official values) and a YAML key."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.runs import settings
from pretrain.runs.settings import setting, to_plain
from pretrain.training.config import ACCELERATORS, PRECISIONS


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run; the defaults are the official recipe."""

    lr: float = setting(
        0.5, "the scripts' learning rate: the peak is lr x total batch / 256, after linear warm-up, then cosine to "
        "final_lr", low=0.0, low_open=True,
    )
    final_lr: float = setting(1e-6, "learning rate at the end", low=0.0)
    epochs: int = setting(50, "length of the run", unit="epochs", low=1)
    warmup_epochs: int = setting(5, "linear learning-rate warm-up", unit="epochs", low=0)
    batch_size: int = setting(128, "clips per device and step (official: 128 x 4 GPUs)", unit="clips", low=1)
    layer_decay: float = setting(
        0.75, "layer-wise lr decay: block i of D gets layer_decay ** (D - i), embeddings ** D, final norm ** 1",
        low=0.0, high=1.0, low_open=True,
    )
    drop_path: float = setting(0.1, "stochastic depth, linspace to this over the blocks", low=0.0, high=1.0,
                               high_open=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0, high_open=True)
    weight_decay: float = setting(0.0, "SGD weight decay", low=0.0)
    clip_grad: float = setting(3.0, "gradient clipping, by norm (0: none)", low=0.0)
    mixup_alpha: float = setting(0.5, "label mixup: lambda ~ Beta(alpha, alpha); 0 turns mixup off", low=0.0)
    mixup_memory: int = setting(5000, "label mixup: FIFO bank of past (mel, label) pairs", unit="clips", low=1)
    rrc: bool = setting(True, "Random Resize Crop after mixup (virtual canvas 1.0 x F, 1.5 x T)")
    max_seconds: float = setting(
        12.0, "centre crop of every clip, train and test", unit="seconds", low=0.0, low_open=True
    )
    freeze: bool = setting(
        False, "the frozen baseline alone: all blocks' features into the same head, encoder untouched", official=False
    )
    baseline: bool = setting(False, "also run the frozen baseline and report both", official=False)
    frozen_lr: float = setting(0.1, "frozen baseline: learning rate", low=0.0, low_open=True)
    frozen_epochs: int = setting(100, "frozen baseline: length", unit="epochs", low=1)
    frozen_batch_size: int = setting(1024, "frozen baseline: batch", unit="clips", low=1)
    # --- event tasks (sound event detection): ATST-SED's two stages (Shao et al., ICASSP 2024;
    # Audio-WestlakeU/ATST-SED train/confs/stage1.yaml, stage2.yaml); docs/finetuning.md#event-tasks
    sed_head: str = setting(
        "bigru", "event tasks: the per-token head: bigru (ATST-SED's: Linear D->128, 2-layer BiGRU of 128, dropout "
        "0.5, Linear) or linear (one Linear per token, as hear-eval-kit's probe)", choices=("bigru", "linear"),
    )
    sed_gru_cells: int = setting(128, "event tasks: BiGRU cells per direction (and the merge layer's width)", low=1)
    sed_gru_layers: int = setting(2, "event tasks: BiGRU layers", low=1)
    sed_dropout: float = setting(0.5, "event tasks: dropout after the BiGRU", low=0.0, high=1.0, high_open=True)
    sed_batch_size: int = setting(
        48, "event tasks: clips per device and step (ATST-SED stage 2: 24 strong + 24 synthetic)", unit="clips", low=1
    )
    sed_train_seconds: float = setting(
        10.0, "event tasks, stage 2: each training clip cropped at random to this on the token grid, anew each "
        "epoch (ATST-SED trains on DESED's 10 s clips; memory grows with it); validation and test clips stay whole "
        "(0: no crop)", unit="seconds", low=0.0,
    )
    sed_stage1_epochs: int = setting(
        200, "event tasks, stage 1: the head on the frozen encoder's last block (0: no stage 1)", unit="epochs", low=0
    )
    sed_stage1_warmup_epochs: int = setting(
        50, "event tasks, stage 1: exponential warm-up, then a constant lr", unit="epochs", low=0
    )
    sed_stage1_lr: float = setting(1e-3, "event tasks, stage 1: Adam lr of the head", low=0.0, low_open=True)
    sed_stage2_epochs: int = setting(
        250, "event tasks, stage 2: encoder and head together (0: stop after stage 1)", unit="epochs", low=0
    )
    sed_stage2_warmup_epochs: int = setting(
        10, "event tasks, stage 2: exponential warm-up, then cosine to 0.1 x the peak", unit="epochs", low=0
    )
    sed_stage2_lr: float = setting(2e-3, "event tasks, stage 2: Adam lr of the head", low=0.0, low_open=True)
    sed_encoder_lr: float = setting(
        2e-4, "event tasks, stage 2: Adam lr of the encoder's final norm; block i of D gets it x "
        "sed_layer_decay ** (D - i), the embeddings x sed_layer_decay ** (D + 1)", low=0.0, low_open=True,
    )
    sed_layer_decay: float = setting(
        0.5, "event tasks, stage 2: layer-wise lr decay of the encoder", low=0.0, high=1.0, low_open=True
    )
    seed: int = setting(0, "seeds the head, the data order, mixup and drop path", official=False)
    devices: str = setting("auto", "devices per node: auto, a count, or indices such as 0,1", official=False)
    num_nodes: int = setting(1, "machines of the run", low=1, official=False)
    accelerator: str = setting("auto", "Lightning accelerator", choices=ACCELERATORS, official=False)
    strategy: str = setting("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...", official=False)
    precision: str = setting("32-true", "Lightning precision (bf16-mixed: bfloat16 autocast)", choices=PRECISIONS,
                             official=False)
    accumulate_grad_batches: int = setting(1, "batches per optimizer step", low=1, official=False)
    log_every: int = setting(10, "logging interval", unit="optimizer steps", low=1, official=False)
    resume: str = setting(
        "auto", "auto: each round continues from its last.ckpt if there is one; never: start afresh",
        choices=("auto", "never"), official=False,
    )

    def __post_init__(self) -> None:
        if self.sed_stage1_epochs == 0 and self.sed_stage2_epochs == 0:
            raise ValueError("sed_stage1_epochs and sed_stage2_epochs are both 0: an event task needs one stage")
        for stage in ("stage1", "stage2"):
            epochs, warmup = getattr(self, f"sed_{stage}_epochs"), getattr(self, f"sed_{stage}_warmup_epochs")
            if epochs and warmup >= epochs:
                raise ValueError(f"sed_{stage}_warmup_epochs ({warmup}) must be below sed_{stage}_epochs ({epochs})")
        if 0 < self.sed_train_seconds < 1.0:
            raise ValueError(f"sed_train_seconds must be 0 (no crop) or at least 1 s, got {self.sed_train_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


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
        "sed_batch_size": 8,
        "sed_stage1_epochs": 20,
        "sed_stage1_warmup_epochs": 2,
        "sed_stage2_epochs": 20,
        "sed_stage2_warmup_epochs": 2,
    },
}
# Event tasks: the dataclass defaults are ATST-SED's (DESED, stage1.yaml / stage2.yaml); "atst-sed"
# names them. Scene presets leave them at those defaults.
PRESETS["atst-sed"] = {}


OFFICIAL_PRESETS = ("default", "as20k", "fsd50k", "spcv2", "us8k", "nsynth", "voxceleb1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="any checkpoint the package reads, or a registered name"
    )
    parser.add_argument(
        "--task", type=Path, required=True, help="a HEAR 2021 task folder: a scene task (clip labels) or an event "
        "task (onsets and offsets); its metadata's embedding_type decides"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, scores.json")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="starting values: default (the official recipe), the official tasks' scripts (as20k, fsd50k, spcv2, "
        "us8k, nsynth, voxceleb1), atst-sed (event tasks: ATST-SED's two stages, the defaults), or tiny (this "
        "project's, minutes on two CPU cores)",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of settings, applied over the preset")
    settings.add_arguments(parser, FinetuneConfig, PRESETS, OFFICIAL_PRESETS)


def from_arguments(args: argparse.Namespace) -> FinetuneConfig:
    """Preset, then the YAML file, then command-line flags."""
    config = settings.from_arguments(args, FinetuneConfig, PRESETS, args.preset)
    if config.warmup_epochs >= config.epochs:
        raise ValueError(f"warmup_epochs ({config.warmup_epochs}) must be below epochs ({config.epochs})")
    return config
