"""A straightforward re-statement of the official ATST computations, the test suite's oracle and
the speed reference of benchmarks/: torchaudio's transforms applied to each ``(1, 1, T)`` clip
(``official_mel``, which needs torchaudio: the harness stack), explicit softmax attention with an
additive -10000 key mask, one chunk at a time in a Python loop over the padded batch, and the
final norm applied per block. Written from the official code's behaviour (audiossl
``models/atst/audio_transformer.py``, ``methods/atstframe/audio_transformer.py``); it reuses only
the parameters of an ATSTEncoder.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from pretrain.model.encoder import ATSTEncoder

MASK_VALUE = -10000.0


def official_mel(wav: torch.Tensor) -> torch.Tensor:
    """(n_samples,) -> (64, T) with torchaudio's own transforms, as the official code."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=1024, win_length=1024, hop_length=160, f_min=60, f_max=7800, n_mels=64
    )(wav[None, None])
    db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80)(mel)
    return ((db - (-79.6482)) / (50.6842 - (-79.6482)) * 2 - 1)[0, 0]


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([m.shape[-1] for m in mels])
    out = torch.zeros(len(mels), 1, 64, int(lengths.max()))
    for i, m in enumerate(mels):
        out[i, 0, :, : m.shape[-1]] = m
    return out, lengths


def _block(blk, x, n_valid):
    b, n, d = x.shape
    h = blk.attn.num_heads
    y = blk.norm1(x)
    qkv = (y @ blk.attn.qkv.weight.T).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
    mask = torch.arange(n)[None, :] >= n_valid[:, None]
    att = att + MASK_VALUE * mask[:, None, None, :].float()
    out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + blk.attn.proj(out)
    z = blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(x))))
    return x + z


def _tokens(enc: ATSTEncoder, mel4d: torch.Tensor) -> torch.Tensor:
    b, _, h, w = mel4d.shape
    w = w - w % 4
    # einops 'b c (h p1) (w p2) -> b (w h) (p1 p2 c)' with p1 = 64, p2 = 4
    patches = mel4d[:, :, :, :w].reshape(b, 1, 1, 64, w // 4, 4).permute(0, 4, 2, 3, 5, 1).reshape(b, w // 4, 256)
    x = enc.patch_embed.patch_embed(patches)
    if not enc.family.cls_token:  # FrameAST: no CLS, positions from slot 1
        return x + enc.pos_embed[:, 1 : x.shape[1] + 1]
    x = torch.cat([enc.cls_token.expand(b, -1, -1), x], dim=1)
    return x + enc.pos_embed[:, : x.shape[1]]


def intermediate_layers(enc: ATSTEncoder, mel4d, length, n):
    """Official get_intermediate_layers (Frame: scene=False): list of n (B, [CLS +] N, D)."""
    patch_length = (length - length % 4) // 4
    x = _tokens(enc, mel4d)
    out = []
    for i, blk in enumerate(enc.blocks):
        x = _block(blk, x, patch_length + enc.n_prefix)
        if len(enc.blocks) - i <= n:
            out.append(enc.final_norm(x))
    return out


def intermediate_layers_chunks(enc: ATSTEncoder, mel4d, length, n, chunk_len):
    """Official get_intermediate_layers_chunks(avgpool=True): (B, 2 n D)."""
    total = mel4d.shape[-1]
    cls_all, avg_all, marks = [], [], []
    for i in range(total // chunk_len + 1):
        cur_len = torch.clip(length - i * chunk_len, 0)
        mark = cur_len > 0 if i == 0 else cur_len > chunk_len // 2
        chunk = mel4d[:, :, :, i * chunk_len : min((i + 1) * chunk_len, total)]
        if chunk.shape[-1] < 4:
            # the official code cannot run an empty chunk; such a chunk never counts
            continue
        outs = intermediate_layers(enc, chunk, cur_len, n)
        patch_length = (cur_len - cur_len % 4) // 4
        valid = torch.arange(outs[0].shape[1] - 1)[None, :] < patch_length[:, None]
        cls_all.append(torch.stack([o[:, 0] for o in outs]))
        avg_all.append(
            torch.stack([(o[:, 1:] * valid[..., None]).sum(1) / (patch_length[:, None] + 1e-6) for o in outs])
        )
        marks.append(mark)
    m = torch.stack(marks).float()[:, None, :, None]  # (chunks, 1, B, 1)
    cls = (torch.stack(cls_all) * m).sum(0) / m.sum(0)
    avg = (torch.stack(avg_all) * m).sum(0) / m.sum(0)
    return torch.cat(list(cls) + list(avg), dim=-1)


def layer_features_chunks(enc: ATSTEncoder, mel4d, length, n, chunk_tokens):
    """Per-token features the plain way: token-grid chunks one at a time, (n, B, T, D)."""
    frames = chunk_tokens * 4
    total_tokens = mel4d.shape[-1] // 4
    pieces = []
    for start in range(0, total_tokens, chunk_tokens):
        chunk = mel4d[:, :, :, start * 4 : start * 4 + frames]
        cur_len = torch.clip(length - start * 4, 0)
        outs = intermediate_layers(enc, chunk, cur_len, n)
        pieces.append(torch.stack(outs)[:, :, enc.n_prefix :])
    return torch.cat(pieces, dim=2)


# --- ATST-Frame: atstframe/embedding.py (the official feature functions) and its linear evaluation


def frame_scene_means(enc: ATSTEncoder, mel4d, length, n):
    """FrameAST.get_intermediate_layers(scene=True): per block sum(tokens) / (n_tokens + 1e-6), concatenated."""
    patch_length = (length - length % 4) // 4
    if mel4d.shape[-1] < 4:  # a chunk of 1-3 frames has no token: the official sum is 0
        return torch.zeros(mel4d.shape[0], n * enc.embed_dim)
    outs = intermediate_layers(enc, mel4d, length, n)
    valid = (torch.arange(outs[0].shape[1])[None, :] < patch_length[:, None]).float()[..., None]
    return torch.cat([(o * valid).sum(1) / (patch_length[:, None] + 1e-6) for o in outs], dim=-1)


def _official_frame_chunks(mel4d):
    """embedding.py's chunks: 1001 frames, hard-coded, the last one truncated."""
    total, chunk = mel4d.shape[-1], 1001
    return [mel4d[..., i * chunk : min((i + 1) * chunk, total)] for i in range(total // chunk + 1) if i * chunk < total]


def frame_official_timestamp_embedding(enc: ATSTEncoder, mel4d, n_blocks):
    """get_timestamp_embedding: per 1001-frame chunk the last n blocks, tokens concatenated; timestamps 40 k ms."""
    pieces = []
    for chunk in _official_frame_chunks(mel4d):
        width = torch.tensor([chunk.shape[-1]]).expand(chunk.shape[0])
        if chunk.shape[-1] >= 4:
            pieces.append(torch.cat(intermediate_layers(enc, chunk, width, n_blocks), dim=-1))
    emb = torch.cat(pieces, dim=1)
    return emb, (torch.arange(emb.shape[1]) * 40).float()[None].expand(emb.shape[0], -1)


def frame_official_scene_embedding(enc: ATSTEncoder, mel4d):
    """get_scene_embedding: all 12 blocks' token means per chunk, chunks averaged with equal weight."""
    chunks = _official_frame_chunks(mel4d)
    vectors = [frame_scene_means(enc, c, torch.tensor([c.shape[-1]]).expand(c.shape[0]), enc.depth) for c in chunks]
    return torch.stack(vectors).mean(0)


def frame_linear_eval(enc: ATSTEncoder, mel4d, length, n, chunk_len=1001):
    """atstframe/downstream/model.py forward: cur_len clipped to the chunk, the half-chunk rule, padded batch."""
    total = mel4d.shape[-1]
    outputs, marks = [], []
    for i in range(total // chunk_len + 1):
        cur_len = torch.clip(length - i * chunk_len, 0, chunk_len)
        mark = cur_len > 0 if i == 0 else cur_len > chunk_len // 2
        start, end = i * chunk_len, min((i + 1) * chunk_len, total)
        if end > start + 20:
            outputs.append(frame_scene_means(enc, mel4d[..., start:end], cur_len, n))
            marks.append(mark)
    m = torch.stack(marks).float()[..., None]
    return (torch.stack(outputs) * m).sum(0) / m.sum(0)


def official_span_mask(n_tokens: int, mask_prob=0.65, mask_length=5, min_masks=2, rng=np.random) -> np.ndarray:
    """fairseq compute_mask_indices((1, n_tokens), mask_type="static", no_overlap=False, min_space=0),
    as atstframe/random_mask.get_mask calls it: one clip's boolean mask."""
    num_mask = max(min_masks, int(mask_prob * n_tokens / float(mask_length) + rng.random()))
    lengths = np.full(num_mask, mask_length)
    min_len = min(lengths)
    if n_tokens - min_len <= num_mask:
        min_len = n_tokens - num_mask - 1
    starts = rng.choice(n_tokens - min_len, num_mask, replace=False)
    idx = np.asarray([starts[j] + offset for j in range(len(starts)) for offset in range(lengths[j])])
    mask = np.zeros(n_tokens, dtype=bool)
    mask[np.unique(idx[idx < n_tokens])] = True
    return mask


def official_frame_views(mel, mixup, mask_prob=0.65, mask_length=5):
    """atstframe FrameATSTTrainTransform on one (1, 64, T) crop mel: (teacher view, student view, mask)."""
    student = official_random_resize_crop(mixup(mel), virtual_crop_scale=(1.0, 1.0), time_scale=(1.0, 1.0))
    return mel, student, official_span_mask(mel.shape[-1] // 4, mask_prob, mask_length)


class OfficialMixup:
    """Per-sample log-mixup-exp with a list memory bank, as the official (BYOL-A) transform."""

    def __init__(self, ratio=0.4, n_memory=2000):
        self.ratio, self.n, self.memory_bank = ratio, n_memory, []

    def __call__(self, x):
        alpha = self.ratio * np.random.random()
        if self.memory_bank:
            z = self.memory_bank[np.random.randint(len(self.memory_bank))]
            mixed = torch.log((1 - alpha) * x.exp() + alpha * z.exp() + torch.finfo(x.dtype).eps)
        else:
            mixed = x
        self.memory_bank = (self.memory_bank + [x])[-self.n :]
        return mixed


def official_random_resize_crop(lms, virtual_crop_scale=(1.0, 1.5), freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)):
    """Per-sample Random Resize Crop on a (1, F, T) spectrogram, as the official transform."""
    canvas_h, canvas_w = (int(s * c) for s, c in zip(lms.shape[-2:], virtual_crop_scale, strict=True))
    canvas = torch.zeros(lms.shape[0], canvas_h, canvas_w)
    _, h, w = lms.shape
    x, y = (canvas_w - w) // 2, (canvas_h - h) // 2
    canvas[:, y : y + h, x : x + w] = lms
    ch = int(np.clip(int(np.random.uniform(*freq_scale) * h), 1, canvas_h))
    cw = int(np.clip(int(np.random.uniform(*time_scale) * w), 1, canvas_w))
    i = random.randint(0, canvas_h - ch) if canvas_h > ch else 0
    j = random.randint(0, canvas_w - cw) if canvas_w > cw else 0
    crop = canvas[:, i : i + ch, j : j + cw]
    return torch.nn.functional.interpolate(crop[None], size=(h, w), mode="bicubic", align_corners=True)[0]
