"""The X-ARES encoder's settings, read from environment variables: ``xares.run`` builds the encoder
class with no arguments, so a checkpoint and a layer choice cannot be passed any other way."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pretrain.model.extractor import PRECISIONS

CHECKPOINT_ENV = "ATST_CHECKPOINT"
BLOCKS_ENV = "ATST_BLOCKS"
PRECISION_ENV = "ATST_PRECISION"
# Measured with xares's probe on rendered-sound tasks (docs/xares.md, "Scores"; tiny-long, Clip /
# Frame): the mean over blocks scored 0.572 / 0.588, all blocks concatenated 0.578 / 0.600, the
# last block 0.550 / 0.553, and the mean is 1/depth of the size (xares stores float32 [T', D] per
# clip: base with all 12 blocks costs 922 kB per audio second, one block's width 77 kB).
DEFAULT_BLOCKS = "mean"


class EncoderSettingsError(ValueError):
    """An unset or unusable ``ATST_*`` environment variable."""


@dataclass(frozen=True)
class EncoderSettings:
    """``checkpoint``: path or registered name; ``blocks``: "mean" (of all blocks), "last", "all" or the
    number of last blocks concatenated; ``precision``: the encoder's compute precision (outputs are float32)."""

    checkpoint: str
    blocks: str = DEFAULT_BLOCKS
    precision: str = "float32"

    def n_blocks(self, depth: int) -> int:
        """How many of the last blocks the features are computed from."""
        if self.blocks == "last":
            return 1
        if self.blocks in ("all", "mean"):
            return depth
        n = int(self.blocks)
        if not 1 <= n <= depth:
            raise EncoderSettingsError(f"{BLOCKS_ENV}={self.blocks}: the checkpoint has {depth} blocks (1..{depth})")
        return n

    def width(self, depth: int, dim: int) -> int:
        """The encoder's ``output_dim``."""
        return dim if self.blocks == "mean" else self.n_blocks(depth) * dim


def check_blocks(value: str) -> str:
    value = value.strip().lower()
    if value in ("last", "all", "mean") or (value.isdigit() and int(value) >= 1):
        return value
    raise EncoderSettingsError(
        f"{BLOCKS_ENV}={value!r}: use last, all, mean or a number of last blocks (e.g. 4), concatenated"
    )


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise EncoderSettingsError(f"{PRECISION_ENV}={value!r}: use one of {sorted(PRECISIONS)}")
    return value


def settings_from_env(environ: os._Environ | dict | None = None) -> EncoderSettings:
    """Read ``ATST_CHECKPOINT`` (required), ``ATST_BLOCKS`` and ``ATST_PRECISION``."""
    environ = os.environ if environ is None else environ
    checkpoint = environ.get(CHECKPOINT_ENV, "").strip()
    if not checkpoint:
        raise EncoderSettingsError(
            f"{CHECKPOINT_ENV} is not set: the X-ARES encoder atst_xares.encoder reads its checkpoint from it "
            f"(export {CHECKPOINT_ENV}=/path/to/model.ckpt, or a registered name such as atst-frame-base), "
            "or run python -m atst_xares.run --checkpoint PATH"
        )
    return EncoderSettings(
        checkpoint,
        check_blocks(environ.get(BLOCKS_ENV, DEFAULT_BLOCKS)),
        check_precision(environ.get(PRECISION_ENV, "float32").strip().lower()),
    )


def settings_env(settings: EncoderSettings) -> dict[str, str]:
    """The environment variables that give ``settings`` to an encoder built in another process."""
    return {CHECKPOINT_ENV: settings.checkpoint, BLOCKS_ENV: settings.blocks, PRECISION_ENV: settings.precision}
