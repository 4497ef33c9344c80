"""HEAR 2021 API for ATST-Clip and ATST-Frame (``hear-validator atst_hear -m CKPT``, hear-eval-kit).

The family is read from the checkpoint (``model.family``: "clip" or "frame").

* ``get_scene_embeddings``: the official linear-evaluation features of the family, averaged
  over chunks of the crop length: Clip, CLS and token mean of the last ``n_blocks`` blocks
  (``2 * n_blocks * D``); Frame, the token mean of the last ``n_blocks`` blocks
  (``n_blocks * D``). See ``pretrain.model.features``.
* ``get_timestamp_embeddings``: one embedding per 40 ms token, the last ``n_blocks`` blocks
  concatenated (Clip's CLS excluded): ``n_blocks * D``, timestamps at token centres, exactly
  40 ms apart for any length and never past the clip's end.

Model options (``load_model(path, **options)``, or hear-eval-kit ``--model-options JSON``):
``n_blocks`` (default: all blocks), ``chunk_seconds`` (default: the checkpoint's crop
length, Clip ``train_len`` 6 s, Frame ``anchor_len`` 10 s), ``center_crop_seconds`` (scene
embeddings only; the official linear evaluation used 12, default: no crop), ``chunks_per_pass``
(memory bound) and ``precision`` ("float32"; "bfloat16" / "float16" run the encoder under autocast, e.g. on a GPU).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from pretrain.model.audio_input import check_batch
from pretrain.model.extractor import TOKEN_CENTRE_OFFSET_MS, TOKEN_HOP_MS, ATSTFeatureExtractor, center_crop
from pretrain.model.features import DEFAULT_CHUNKS_PER_PASS
from pretrain.model.frontend import SAMPLE_RATE

CHECKPOINT_ENV = "ATST_CHECKPOINT"

__all__ = ["HearATST", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]


class HearATST(nn.Module):
    """The object ``load_model`` returns: an ``ATSTFeatureExtractor`` plus HEAR attributes
    (``sample_rate``, ``scene_embedding_size``, ``timestamp_embedding_size``) and ``family``."""

    sample_rate = SAMPLE_RATE

    def __init__(self, extractor: ATSTFeatureExtractor, *, n_blocks: int, center_crop_seconds: float | None) -> None:
        super().__init__()
        self.extractor = extractor
        self.n_blocks = extractor.check_n_blocks(n_blocks)
        if center_crop_seconds is not None and not 0 < center_crop_seconds < math.inf:
            raise ValueError(f"center_crop_seconds must be positive seconds or None, got {center_crop_seconds}")
        self.center_crop_seconds = center_crop_seconds
        self.family = extractor.family
        self.scene_embedding_size = extractor.scene_embedding_size(self.n_blocks)
        self.timestamp_embedding_size = self.n_blocks * extractor.encoder.embed_dim


def load_model(
    model_file_path: str = "",
    *,
    n_blocks: int | None = None,
    chunk_seconds: float | None = None,
    center_crop_seconds: float | None = None,
    chunks_per_pass: int = DEFAULT_CHUNKS_PER_PASS,
    precision: str = "float32",
) -> HearATST:
    """Load an ATST checkpoint of either family (any layout ``pretrain.load_encoder`` reads), by path
    or by registered name (``atst-clip-small``, ``atst-clip-base``, ``atst-frame-small``,
    ``atst-frame-base``: downloaded and verified on first use, ``pretrain.model.registry``).

    With no path, the path or name in the ``ATST_CHECKPOINT`` environment variable is used.
    """
    path = model_file_path or os.environ.get(CHECKPOINT_ENV, "")
    if not path:
        raise ValueError(
            "atst_hear needs a checkpoint: pass model_file_path (hear-validator -m, heareval --model) "
            f"or set {CHECKPOINT_ENV}. Use an official ATST-Clip or ATST-Frame checkpoint, or make one "
            "with `python -m pretrain` (or pretrain.write_random_checkpoint for a smoke test)."
        )
    extractor = ATSTFeatureExtractor.from_checkpoint(
        path, chunk_seconds=chunk_seconds, chunks_per_pass=chunks_per_pass, precision=precision
    )
    n_blocks = extractor.encoder.depth if n_blocks is None else n_blocks
    return HearATST(extractor, n_blocks=n_blocks, center_crop_seconds=center_crop_seconds).eval()


def _check_model(model: HearATST) -> None:
    if not isinstance(model, HearATST):
        raise TypeError(f"model must come from atst_hear.load_model, got {type(model).__name__}")


def get_scene_embeddings(audio: Tensor, model: HearATST) -> Tensor:
    """``(n_sounds, n_samples)`` audio at 16 kHz -> ``(n_sounds, scene_embedding_size)``."""
    _check_model(model)
    audio = check_batch(audio)
    if model.center_crop_seconds is not None:
        audio = center_crop(audio, int(model.center_crop_seconds * SAMPLE_RATE))
    with torch.no_grad():
        emb = model.extractor.scene_embeddings(list(audio), n_blocks=model.n_blocks)
    return emb.to(audio.device, torch.float32)


def get_timestamp_embeddings(audio: Tensor, model: HearATST) -> tuple[Tensor, Tensor]:
    """``(n_sounds, n_samples)`` audio -> embeddings ``(n_sounds, n_tokens, size)`` and
    timestamps ``(n_sounds, n_tokens)`` in ms (token centres, 40 ms apart)."""
    _check_model(model)
    audio = check_batch(audio)
    with torch.no_grad():
        layers, _ = model.extractor.layer_features(list(audio), n_blocks=model.n_blocks)
    batch, n_tokens = layers.shape[:2]
    emb = layers.reshape(batch, n_tokens, -1)  # blocks concatenated on channels, first block first
    centres = torch.arange(n_tokens, device=audio.device, dtype=torch.float64) * TOKEN_HOP_MS + TOKEN_CENTRE_OFFSET_MS
    timestamps = centres.to(torch.float32).expand(batch, n_tokens).clone()
    return emb.to(audio.device, torch.float32), timestamps
