"""The ATST families: everything the model side knows about ATST-Clip and ATST-Frame, in one place.

Both share the patching, the positions, the blocks and the front end (``pretrain.model.encoder``).
What differs, from the official classes (``audiossl/models/atst/audio_transformer.py`` ``AST``,
``audiossl/methods/atstframe/audio_transformer.py`` ``FrameAST``) and their linear evaluations:

==================  =======================================  =========================================
                    Clip (``AST``)                           Frame (``FrameAST``)
==================  =======================================  =========================================
CLS token           ``cls_token`` prepended                  none
positions           slots ``0 .. N`` (slot 0 for CLS)        slots ``1 .. N`` (slot 0 stored, unread)
final norm          ``norm``                                 ``norm_frame``
crop (hparams key)  6 s (``train_len``)                      10 s (``anchor_len``)
in a file           ``cls_token`` + ``norm.*``               ``norm_frame.*``, no ``cls_token``
scene feature       ``[CLS ; token mean]`` per block; the    token mean per block, divided by the
                    mean divided by the tokens left in the   tokens in the chunk
                    clip from the chunk start (official
                    quirk: long clips' chunk means scaled)
==================  =======================================  =========================================

A third family (or an ATST-C2F variant) is one more ``Family`` here and one recipe module in
``pretrain/training/recipes/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """What distinguishes one ATST encoder family from the other (module docstring)."""

    name: str
    cls_token: bool  # a CLS token is prepended (and its output is half of the scene feature)
    final_norm: str  # the official attribute name of the final LayerNorm
    crop_seconds: float  # crop length of the official pretraining
    crop_key: str  # its name in the official training arguments (a checkpoint's hyper-parameters)
    mean_over_tokens_left: bool  # scene feature: token sums divided by the clip's tokens from the chunk on

    @property
    def n_prefix(self) -> int:
        """Tokens before the first audio token in a block's output."""
        return int(self.cls_token)

    def holds_encoder(self, weights: Mapping[str, Any], prefix: str) -> bool:
        """Whether the keys under ``prefix`` (an encoder's, with ``pos_embed`` and blocks) are this family's."""
        has_cls = prefix + "cls_token" in weights
        return has_cls == self.cls_token and prefix + self.final_norm + ".weight" in weights

    def scene_width(self, n_blocks: int, embed_dim: int) -> int:
        """Width of the official linear-evaluation feature of ``n_blocks`` blocks."""
        return (1 + self.n_prefix) * n_blocks * embed_dim


FAMILIES = {
    "clip": Family(
        "clip", cls_token=True, final_norm="norm", crop_seconds=6.0, crop_key="train_len", mean_over_tokens_left=True
    ),
    "frame": Family(
        "frame",
        cls_token=False,
        final_norm="norm_frame",
        crop_seconds=10.0,
        crop_key="anchor_len",
        mean_over_tokens_left=False,
    ),
}
CROP_KEYS = tuple(f.crop_key for f in FAMILIES.values())  # any of them: DINO-style Clip files say anchor_len


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]
