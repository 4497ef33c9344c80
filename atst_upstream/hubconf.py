"""s3prl hub entries for ATST (callables without a leading underscore are registered).

``atst`` and ``atst_local`` take a checkpoint of either family (the file says which);
``atst_clip`` and ``atst_frame`` also check that the file holds that family.
"""

from __future__ import annotations

from .expert import UpstreamExpert as _UpstreamExpert


def atst_local(ckpt: str, *args, **kwargs) -> _UpstreamExpert:
    """ATST-Clip or ATST-Frame from a local checkpoint file (any layout ``pretrain`` reads)."""
    return _UpstreamExpert(ckpt, *args, **kwargs)


def atst(ckpt: str | None = None, *args, **kwargs) -> _UpstreamExpert:
    """ATST of the checkpoint's family; no weights are downloaded, so ``ckpt`` (s3prl ``-k``) is required."""
    return _UpstreamExpert(ckpt, *args, **kwargs)


def atst_clip(ckpt: str | None = None, *args, **kwargs) -> _UpstreamExpert:
    """ATST-Clip; refuses a checkpoint of another family."""
    return _UpstreamExpert(ckpt, *args, family="clip", **kwargs)


def atst_frame(ckpt: str | None = None, *args, **kwargs) -> _UpstreamExpert:
    """ATST-Frame (e.g. the official atstframe_small / base, ATST-SED's encoder); refuses a Clip checkpoint."""
    return _UpstreamExpert(ckpt, *args, family="frame", **kwargs)
