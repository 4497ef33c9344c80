"""Each clip's own length in a zero-padded batch.

xares pads every batch to its longest clip and passes no lengths (``xares.audiowebdataset.pad``;
``XaresTask.make_encoded_tar`` keeps only the padded tensor). A clip's length is therefore taken as
its last non-zero sample: trailing exact zeros are dropped in every batch, a clip alone included,
so a clip's features never depend on its batch. The price: exact zeros at the end of a clip are
not encoded (their frames come out as zeros, like the padding's); HEAR's preprocessing pads clips
to the task's duration with such zeros, which are then dropped too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pretrain.model.frontend import MIN_SAMPLES


def unpadded_lengths(audio: Tensor) -> Tensor:
    """``(B, T)`` zero-padded batch -> each row's length up to its last non-zero sample, at least
    ``MIN_SAMPLES`` (the front end's minimum; an all-zero row keeps that much) and at most ``T``."""
    n = audio.shape[-1]
    nonzero = audio != 0
    # index of the last non-zero sample + 1, or 0 for an all-zero row
    last = n - torch.flip(nonzero, dims=[-1]).int().argmax(dim=-1)
    last = torch.where(nonzero.any(dim=-1), last, torch.zeros_like(last))
    return last.clamp(min=min(MIN_SAMPLES, n), max=n)
