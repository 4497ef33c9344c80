"""Chunked feature extraction over clips longer than the encoder's trained crop.

The encoder was trained on crops of ``crop_seconds`` (Clip: ``train_len``, 6 s; Frame:
``anchor_len``, 10 s), so long clips are cut into chunks that are all run together, a bounded
number per forward pass (memory stays flat for hour-long clips). Two protocols:

* ``scene_embedding``: the official linear-evaluation features of each family, kept exact.
  Chunks of ``int(crop_seconds * 100 + 1)`` frames; chunk ``i`` counts if ``i == 0`` and the
  clip reaches into it, or if more than half a chunk of the clip is left; counted chunks are
  averaged with equal weight. Per chunk and block (the last ``n_blocks``, through the final
  norm):

  - Clip (``AST.get_intermediate_layers_chunks``): ``[CLS ; token mean]``, where the token sum
    is divided by the tokens left in the *clip* from the chunk start, not by the tokens in the
    chunk: every chunk but the last of a long clip has its mean scaled by
    ``tokens_in_chunk / tokens_left`` (an official quirk the paper's numbers include);
  - Frame (``atstframe/downstream/model.py``): the token mean alone, divided by the tokens in
    the chunk. (The official code also skips chunks of 20 frames or fewer of the padded batch;
    those never count except for clips under 0.2 s, which here get an embedding instead of a
    division by zero.)
* ``layer_features``: per-token features for timestamp embeddings and s3prl. Chunks are cut
  on the token grid (``crop_seconds * 25`` tokens, i.e. 600 frames for 6 s, not the official
  601 or Frame's 1001) so that no frame is dropped between chunks and tokens stay exactly
  40 ms apart for any length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.model.encoder import PATCH_FRAMES, ATSTEncoder

DEFAULT_CHUNKS_PER_PASS = 32
# A pass holds chunks at least this fraction as wide as its widest, so padding wastes little
# compute while clips of similar lengths still share a pass.
MIN_WIDTH_RATIO = 0.8
# The official code divides token sums by (n_tokens + 1e-6).
MEAN_EPS = 1e-6


class _Chunk(NamedTuple):
    clip: int
    start_frame: int
    n_frames: int  # frames of the clip inside this chunk
    n_frames_left: int = 0  # scene protocol: frames from the chunk start to the clip end (official Clip ``cur_len``)


def _groups(chunks: list[_Chunk], size: int) -> Iterator[list[_Chunk]]:
    """Chunks in passes of at most ``size``, widest first, of similar widths."""
    group: list[_Chunk] = []
    for chunk in sorted(chunks, key=lambda c: -c.n_frames):
        if group and (len(group) == size or chunk.n_frames < MIN_WIDTH_RATIO * group[0].n_frames):
            yield group
            group = []
        group.append(chunk)
    if group:
        yield group


def _chunk_mels(mels: Tensor, group: list[_Chunk]) -> Tensor:
    """Stack the group's mel chunks, zero-padded to the widest: ``(G, 64, W)``."""
    width = max(c.n_frames for c in group)
    pieces = []
    for c in group:
        piece = mels[c.clip, :, c.start_frame : c.start_frame + c.n_frames]
        pieces.append(F.pad(piece, (0, width - c.n_frames)))
    return torch.stack(pieces)


def scene_embedding(
    encoder: ATSTEncoder,
    mels: Tensor,
    lengths: Tensor,
    *,
    n_blocks: int,
    chunk_frames: int,
    chunks_per_pass: int = DEFAULT_CHUNKS_PER_PASS,
) -> Tensor:
    """Official linear-evaluation features of the encoder's family (module docstring): Clip
    ``(B, 2 * n_blocks * D)``, CLS parts then means; Frame ``(B, n_blocks * D)``, means.

    ``mels`` is ``(B, 64, T)`` padded, ``lengths`` the frames of each clip.
    """
    chunks = []
    n_counted = []
    for clip, length in enumerate(lengths.tolist()):
        counted = 0
        for i in range(length // chunk_frames + 1):
            left = length - i * chunk_frames
            if (i == 0 and left > 0) or (i > 0 and left > chunk_frames // 2):
                chunks.append(_Chunk(clip, i * chunk_frames, min(left, chunk_frames), left))
                counted += 1
        n_counted.append(counted)

    batch, dim, prefix, family = mels.shape[0], encoder.embed_dim, encoder.n_prefix, encoder.family
    cls_sum = mels.new_zeros(batch, n_blocks, dim)
    mean_sum = mels.new_zeros(batch, n_blocks, dim)
    for group in _groups(chunks, chunks_per_pass):
        tokens_in_chunk = torch.tensor([c.n_frames // PATCH_FRAMES for c in group], device=mels.device)
        # Clip divides by the tokens left in the clip (the official quirk); Frame by those in the chunk
        divisor = [(c.n_frames_left if family.mean_over_tokens_left else c.n_frames) // PATCH_FRAMES for c in group]
        divisor = torch.tensor(divisor, device=mels.device, dtype=mels.dtype)
        valid = torch.arange(int(tokens_in_chunk.max()), device=mels.device)[None, :] < tokens_in_chunk[:, None]
        weights = (valid.to(mels.dtype) / (divisor[:, None] + MEAN_EPS))[:, None, :]
        cls, mean = [], []
        for layer in encoder.block_outputs(_chunk_mels(mels, group), tokens_in_chunk, n_last=n_blocks):
            if family.cls_token:
                cls.append(layer[:, 0])
            mean.append((weights.to(layer.dtype) @ layer[:, prefix:])[:, 0])  # masked sum / divisor
        owner = torch.tensor([c.clip for c in group], device=mels.device)
        if family.cls_token:
            cls_sum.index_add_(0, owner, torch.stack(cls, dim=1).to(cls_sum.dtype))
        mean_sum.index_add_(0, owner, torch.stack(mean, dim=1).to(mean_sum.dtype))
    counts = torch.tensor(n_counted, device=mels.device, dtype=mels.dtype)[:, None, None]
    means = (mean_sum / counts).flatten(1)
    return torch.cat([(cls_sum / counts).flatten(1), means], dim=1) if family.cls_token else means


def layer_features(
    encoder: ATSTEncoder,
    mels: Tensor,
    lengths: Tensor,
    *,
    n_blocks: int,
    chunk_tokens: int,
    chunks_per_pass: int = DEFAULT_CHUNKS_PER_PASS,
) -> tuple[Tensor, Tensor]:
    """Per-token outputs of the last ``n_blocks`` blocks (final norm, Clip's CLS left out).

    Returns ``(B, T_tokens_max, n_blocks, D)`` zero-padded (HEAR's concatenated layers are a free
    reshape of it, s3prl's hidden states views along dimension 2), and the tokens of each clip.
    Token ``k`` covers frames ``4k .. 4k+3``. Differentiable (s3prl fine-tuning).
    """
    n_tokens = (lengths // PATCH_FRAMES).tolist()
    chunks = [
        _Chunk(clip, start * PATCH_FRAMES, min(chunk_tokens, total - start) * PATCH_FRAMES)
        for clip, total in enumerate(n_tokens)
        for start in range(0, total, chunk_tokens)
    ]
    out = mels.new_zeros(len(n_tokens), max(n_tokens), n_blocks, encoder.embed_dim)
    prefix = encoder.n_prefix
    for group in _groups(chunks, chunks_per_pass):
        tokens_in_chunk = torch.tensor([c.n_frames // PATCH_FRAMES for c in group], device=mels.device)
        layers = encoder.block_outputs(_chunk_mels(mels, group), tokens_in_chunk, n_last=n_blocks)
        for index, layer in enumerate(layers):
            for g, c in enumerate(group):
                first, n = c.start_frame // PATCH_FRAMES, c.n_frames // PATCH_FRAMES
                out[c.clip, first : first + n, index] = layer[g, prefix : prefix + n]
    return out, torch.tensor(n_tokens, device=mels.device)
