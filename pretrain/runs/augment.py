"""The two view augmentations of ATST pretraining, batched on the training device.

Mixup (log-mixup-exp with a FIFO memory bank of earlier inputs) and Random Resize Crop, as in
the official transform (from BYOL-A), applied to a whole batch of scaled log-mels at once.
Deliberate differences from the official per-sample code, which runs in data-loader workers:

* Mixup draws the background of every item of a batch from the bank as it was before the
  batch, then appends the batch (the official code, one clip at a time, can also mix with the
  clips before it in the same batch). One bank per view, as officially; it lives on the device.
* Random Resize Crop samples the crop on the virtual canvas exactly as the official code, then
  resamples with one ``grid_sample`` (bicubic, ``align_corners=True``, zeros outside) instead of
  cutting the crop out and ``interpolate``-ing it: identical inside the crop, while the bicubic
  taps at the crop's border read the canvas beyond it instead of repeating the border.
* Random numbers come from a ``torch.Generator`` the caller seeds (per step and rank), so a
  resumed run repeats them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_EPS = torch.finfo(torch.float32).eps


class LogMixupExp(nn.Module):
    """``log((1 - a) exp(x) + a exp(z) + eps)`` with ``a ~ ratio * U(0, 1)`` and ``z`` an earlier input."""

    def __init__(self, *, ratio: float = 0.4, memory: int = 2000) -> None:
        super().__init__()
        self.ratio = ratio
        self.memory = memory
        self.register_buffer("bank", torch.empty(0), persistent=False)
        self.filled = 0
        self.position = 0

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        batch = x.shape[0]
        if self.bank.shape[1:] != x.shape[1:] or self.bank.device != x.device:
            self.bank = x.new_zeros(self.memory, *x.shape[1:])
            self.filled = self.position = 0
        alpha = self.ratio * torch.rand(batch, generator=generator, device=generator.device).to(x)
        if self.filled:
            pick = torch.randint(self.filled, (batch,), generator=generator, device=generator.device).to(x.device)
            z = self.bank[pick]
            a = alpha.view(-1, *([1] * (x.ndim - 1)))
            mixed = torch.log((1 - a) * x.exp() + a * z.exp() + LOG_EPS)
        else:
            mixed = x
        slots = (self.position + torch.arange(batch, device=x.device)) % self.memory
        self.bank[slots] = x.detach()
        self.position = (self.position + batch) % self.memory
        self.filled = min(self.filled + batch, self.memory)
        return mixed


class RandomResizeCrop(nn.Module):
    """Crop a random area of a zero canvas ``virtual_crop_scale`` times wider than the input
    (input centred) and resize it back to the input size."""

    def __init__(
        self,
        *,
        virtual_crop_scale: float = 1.5,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
    ) -> None:
        super().__init__()
        self.virtual_crop_scale = virtual_crop_scale
        self.freq_scale = freq_scale
        self.time_scale = time_scale

    def crop_boxes(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """``(B, 4)`` float boxes ``(top, left, h, w)`` in input coordinates (official sampling)."""
        canvas_h, canvas_w = height, int(width * self.virtual_crop_scale)
        dev = generator.device
        u = torch.rand(batch, 4, generator=generator, device=dev, dtype=torch.float64)
        h = (self.freq_scale[0] + u[:, 0] * (self.freq_scale[1] - self.freq_scale[0])) * height
        w = (self.time_scale[0] + u[:, 1] * (self.time_scale[1] - self.time_scale[0])) * width
        h = h.floor().clamp(1, canvas_h)
        w = w.floor().clamp(1, canvas_w)
        top = (u[:, 2] * (canvas_h - h + 1)).floor()
        left = (u[:, 3] * (canvas_w - w + 1)).floor()
        offset_y, offset_x = (canvas_h - height) // 2, (canvas_w - width) // 2
        return torch.stack([top - offset_y, left - offset_x, h, w], dim=1)

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x``: ``(B, F, T)`` -> ``(B, F, T)``."""
        batch, height, width = x.shape
        box = self.crop_boxes(batch, height, width, generator).to(x.device, torch.float32)
        top, left, h, w = box.unbind(1)
        rows = torch.linspace(0, 1, height, device=x.device)
        cols = torch.linspace(0, 1, width, device=x.device)
        # source pixel of each output pixel, then normalised for align_corners=True
        src_y = top[:, None] + rows[None, :] * (h[:, None] - 1)
        src_x = left[:, None] + cols[None, :] * (w[:, None] - 1)
        grid_y = 2 * src_y / (height - 1) - 1
        grid_x = 2 * src_x / (width - 1) - 1
        grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
        out = F.grid_sample(x[:, None], grid, mode="bicubic", padding_mode="zeros", align_corners=True)
        return out[:, 0]
