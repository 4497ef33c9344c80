"""s3prl hub entries for ATST (callables without a leading underscore are registered)."""

from __future__ import annotations

from .expert import UpstreamExpert as _UpstreamExpert


def atst_local(ckpt: str, *args, **kwargs) -> _UpstreamExpert:
    """ATST-Clip from a local checkpoint file (official small/base or one from ``pretrain``)."""
    return _UpstreamExpert(ckpt, *args, **kwargs)


def atst(ckpt: str | None = None, *args, **kwargs) -> _UpstreamExpert:
    """ATST-Clip; no weights are downloaded, so ``ckpt`` (s3prl ``-k``) is required."""
    return _UpstreamExpert(ckpt, *args, **kwargs)
