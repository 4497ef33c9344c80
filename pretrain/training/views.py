"""The two views of each recipe, made batched on the training device from the loader's crops.

=====================  ====================================  =========================================
                       ATST-Clip (``family="clip"``)          ATST-Frame (``family="frame"``)
=====================  ====================================  =========================================
crops per clip          two independent random crops          one crop, used for both views
view A                  Mixup (own bank) + Random Resize      the mel, unaugmented (official
                        Crop on a 1.5x wider canvas           ``aug_tea=False``)
view B                  the same, independently               Mixup + Random Resize Crop in frequency
                                                              only (canvas 1.0x, time scale 1): the
                                                              frames stay aligned with view A
token mask              none                                  spans of ``mask_span`` tokens, one mask
                                                              per clip shared by both views
=====================  ====================================  =========================================

Span masking is fairseq's ``compute_mask_indices`` as the official Frame recipe calls it
(``mask_type="static"``, ``no_overlap=False``, ``min_masks=2``): per clip
``floor(mask_prob * n_tokens / mask_span + U(0, 1))`` spans (at least ``min_spans``), their starts
drawn without replacement from ``0 .. n_tokens - mask_span - 1``, spans free to overlap; with the
official 0.65 and 5 about half of the tokens end up masked, not 65 %.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretrain.model.frontend import LogMelFrontEnd
from pretrain.training.augment import LogMixupExp, RandomResizeCrop


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


class ClipViews(nn.Module):
    """Two augmented views of two crops per clip (one Mixup bank per view, as officially)."""

    n_crops = 2

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


class FrameViews(nn.Module):
    """The unaugmented mel and a frequency-only augmented copy of one crop, with a shared token mask."""

    n_crops = 1

    def __init__(self, config) -> None:
        super().__init__()
        self.mixup = LogMixupExp(ratio=config.mixup_ratio, memory=config.mixup_memory)
        self.crop = RandomResizeCrop(virtual_crop_scale=1.0, freq_scale=config.freq_scale, time_scale=(1.0, 1.0))
        self.mask_prob, self.mask_span, self.min_spans = config.mask_prob, config.mask_span, config.min_spans

    def forward(self, mels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 1, F, T)`` mels -> the teacher-side view, the augmented view, and ``(B, T // 4)`` masks."""
        mel = mels[:, 0]
        n_tokens = mel.shape[-1] // 4
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


VIEWS = {"clip": ClipViews, "frame": FrameViews}


def crop_mels(frontend: LogMelFrontEnd, wavs: Tensor) -> Tensor:
    """``(B, n_crops, n)`` crops -> ``(B, n_crops, 64, T)`` scaled log-mels (per-crop ``top_db`` floor)."""
    batch, n_crops = wavs.shape[:2]
    return frontend.equal_length(wavs.flatten(0, 1).float()).unflatten(0, (batch, n_crops))

