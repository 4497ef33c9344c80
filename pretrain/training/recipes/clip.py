"""ATST-Clip pretraining (Li & Li, Interspeech 2022; audiossl ``methods/atst/``).

Views: two independent random crops per clip, each through its own Mixup bank (log-mixup-exp)
and Random Resize Crop on a 1.5x wider canvas. The loss compares the CLS output of the last block
through ``norm``, one row per clip; ``mask_embed`` is unused (frozen, so DDP needs no search for
unused parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretrain.model.encoder import ATSTEncoder
from pretrain.runs.augment import LogMixupExp, RandomResizeCrop
from pretrain.training.recipes.base import CPU_SIZED, Recipe


class ClipViews(nn.Module):
    """Two augmented views of two crops per clip (one Mixup bank per view, as officially)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.mixups = nn.ModuleList(LogMixupExp(ratio=config.mixup_ratio, memory=config.mixup_memory) for _ in range(2))
        self.crop = RandomResizeCrop(
            virtual_crop_scale=config.virtual_crop_scale, freq_scale=config.freq_scale, time_scale=config.time_scale
        )

    def forward(self, mels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, None]:
        """``(B, 2, F, T)`` mels of the two crops -> two ``(B, F, T)`` views, no token mask."""
        view_a, view_b = (self.crop(mix(mels[:, v], generator), generator) for v, mix in enumerate(self.mixups))
        return view_a, view_b, None


def cls_outputs(encoder: ATSTEncoder, mels: Tensor, token_mask: Tensor | None, masked_input: bool) -> Tensor:
    """``(B, D)``: the CLS output."""
    return encoder(mels)[:, 0]


def official_hparams(config) -> dict[str, Any]:
    return {"train_len": config.crop_seconds}


PRESETS: dict[str, dict[str, Any]] = {
    # official ATST-Clip small (audiossl atst/train_small.sh): 4 GPUs x 384, base lr 5e-4, 1,300 warm-up,
    # 39,100 steps, EMA 0.99; crops of 6 s as in the paper (the script says 9). The settings' defaults.
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
    "tiny": {**CPU_SIZED, "crop_seconds": 2.0},
    # tiny for about 8 minutes on two cores, with a slow teacher: the settings that learn on this scale
    # (docs/pretraining.md: with EMA 0.99 the teacher follows the student within ~100 steps and the
    # embeddings collapse to a few directions; at 0.998 it keeps its random-init richness longer)
    "tiny-long": {
        **CPU_SIZED,
        "crop_seconds": 2.0,
        "max_steps": 1500,
        "warmup_steps": 50,
        "ema": 0.998,
        "checkpoint_every": 500,
        "log_every": 25,
    },
}

RECIPE = Recipe(
    family="clip",
    n_crops=2,
    views=ClipViews,
    outputs=cls_outputs,
    official_hparams=official_hparams,
    presets=PRESETS,
    default_preset="small",
    official_presets=("small", "base"),
    cpu_preset="tiny",
    uses_mask_embed=False,
)
