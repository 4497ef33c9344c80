"""ATST-Frame pretraining (Li, Shao & Li, TASLP 2024; audiossl ``methods/atstframe/``).

Views: one random crop per clip; view A is its mel unaugmented (official ``aug_tea=False``),
view B the same mel through Mixup and a Random Resize Crop in frequency only (canvas 1.0x, time
scale 1), so its frames stay aligned with view A. One token mask per clip, shared by both views:
the student sees the masked tokens replaced by ``mask_embed``, the teacher the unmasked input, and
the loss compares the last block's outputs through ``norm_frame`` at the masked tokens.

Span masking is fairseq's ``compute_mask_indices`` as the official recipe calls it
(``mask_type="static"``, ``no_overlap=False``, ``min_masks=2``): per clip
``floor(mask_prob * n_tokens / mask_span + U(0, 1))`` spans (at least ``min_spans``), their starts
drawn without replacement from ``0 .. n_tokens - mask_span - 1``, spans free to overlap; with the
official 0.65 and 5 about half of the tokens end up masked, not 65 %.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretrain.model.encoder import PATCH_FRAMES, ATSTEncoder
from pretrain.runs.augment import LogMixupExp, RandomResizeCrop
from pretrain.training.recipes.base import CPU_SIZED, Recipe


def span_masks(
    batch: int,
    n_tokens: int,
    *,
    mask_prob: float,
    mask_span: int,
    min_spans: int,
    generator: torch.Generator,
) -> Tensor:
    """``(batch, n_tokens)`` boolean masks, one per clip (module docstring), drawn on ``generator``'s device."""
    device = generator.device
    n_spans = torch.floor(mask_prob * n_tokens / mask_span + torch.rand(batch, generator=generator, device=device))
    n_spans = n_spans.clamp(min=min_spans).long()
    most = int(n_spans.max())
    n_starts = n_tokens - mask_span
    if n_starts <= most:  # the official shortens the span range rather than fail on short inputs
        n_starts = n_tokens - most - 1
    if n_starts < most:
        raise ValueError(f"{n_tokens} tokens cannot hold {most} distinct span starts; use a longer crop")
    # a random permutation of the possible starts per clip; the first n_spans of it are the starts
    starts = torch.rand(batch, n_starts, generator=generator, device=device).argsort(dim=1)[:, :most]
    chosen = torch.arange(most, device=device)[None, :] < n_spans[:, None]
    hits = torch.zeros(batch, n_tokens, device=device)
    for offset in range(mask_span):
        position = starts + offset
        inside = chosen & (position < n_tokens)
        hits.scatter_add_(1, position.clamp(max=n_tokens - 1), inside.float())
    return hits > 0


class FrameViews(nn.Module):
    """The unaugmented mel and a frequency-only augmented copy of one crop, with a shared token mask."""

    def __init__(self, config) -> None:
        super().__init__()
        self.mixup = LogMixupExp(ratio=config.mixup_ratio, memory=config.mixup_memory)
        self.crop = RandomResizeCrop(virtual_crop_scale=1.0, freq_scale=config.freq_scale, time_scale=(1.0, 1.0))
        self.mask_prob, self.mask_span, self.min_spans = config.mask_prob, config.mask_span, config.min_spans

    def forward(self, mels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 1, F, T)`` mels -> the teacher-side view, the augmented view, and ``(B, T // 4)`` masks."""
        mel = mels[:, 0]
        n_tokens = mel.shape[-1] // PATCH_FRAMES
        # masks first: Mixup draws more numbers once its bank holds clips (it starts empty after a
        # resume), and the masks must stay a function of the seed and the step alone
        masks = span_masks(
            mel.shape[0],
            n_tokens,
            mask_prob=self.mask_prob,
            mask_span=self.mask_span,
            min_spans=self.min_spans,
            generator=generator,
        )
        augmented = self.crop(self.mixup(mel, generator), generator)
        return mel, augmented, masks


def masked_token_outputs(encoder: ATSTEncoder, mels: Tensor, token_mask: Tensor | None, masked_input: bool) -> Tensor:
    """``(n_masked, D)``: the outputs at the masked tokens (the input masked for the student only)."""
    return encoder(mels, token_mask=token_mask if masked_input else None)[token_mask]


def official_hparams(config) -> dict[str, Any]:
    """``atstframe/train.py``'s names (and its fixed values) for what the run also holds."""
    return {
        "anchor_len": config.crop_seconds,
        "mask_ratio": config.mask_prob,
        "mask_len": config.mask_span,
        "min_mask_len": config.min_spans,
        "mask_type": "block",
        "symmetric": True,
        "nprompt": 0,
        "patch_h": 64,
        "patch_w": PATCH_FRAMES,
        "n_mels": 64,
        "aug_tea": False,
        "aug_stu": True,
    }


def check(config) -> None:
    n_tokens = int(config.crop_seconds * 100 + 1) // PATCH_FRAMES
    if n_tokens - config.mask_span <= config.min_spans:
        raise ValueError(
            f"a {config.crop_seconds} s crop ({n_tokens} tokens) is too short for spans of {config.mask_span}"
        )


PRESETS: dict[str, dict[str, Any]] = {
    # official ATST-Frame small (atstframe/train_small.sh): 4 GPUs x 256, base lr 4e-4, 1,950 warm-up,
    # 58,500 steps, EMA 0.997, 10 s crops, spans of 5 at 0.65
    "frame-small": {
        "family": "frame",
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
        "family": "frame",
        "arch": "base",
        "crop_seconds": 10.0,
        "batch_size": 144,
        "base_lr": 8e-5,
        "warmup_steps": 19900,
        "max_steps": 398000,
        "ema": 0.9996,
    },
    "frame-tiny": {**CPU_SIZED, "family": "frame", "crop_seconds": 4.0},
}

RECIPE = Recipe(
    family="frame",
    n_crops=1,
    views=FrameViews,
    outputs=masked_token_outputs,
    official_hparams=official_hparams,
    presets=PRESETS,
    default_preset="frame-small",
    official_presets=("frame-small", "frame-base"),
    cpu_preset="frame-tiny",
    uses_mask_embed=True,
    check=check,
)
