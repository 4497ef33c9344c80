"""The ATST-Clip audio transformer encoder (official class ``AST``).

Parameter names and shapes equal the official encoder's, so official weights load with
``strict=True``. Deliberate differences from the official code, none of which changes a
result beyond float32 rounding:

* attention is ``scaled_dot_product_attention`` with a boolean key-padding mask instead
  of an explicit softmax with an additive -10000 mask (exp(-10000) is 0 in float32); the
  mask is omitted when no key is padded, which lets PyTorch pick a fused kernel;
* no dropout or stochastic-depth modules: the released models use rate 0 at inference, and
  pretraining here does not use them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.model.frontend import N_MELS

PATCH_FRAMES = 4  # one token = all mel bins x 4 frames = 40 ms
PATCH_DIM = N_MELS * PATCH_FRAMES
N_POSITIONS = 251  # CLS + 250 tokens: 10 s per forward pass
HEAD_DIM = 64  # small: 384 / 6, base: 768 / 12
LAYER_NORM_EPS = 1e-6
MLP_RATIO = 4

# name -> (embed_dim, depth, num_heads); "tiny" is this project's CPU-sized model for tests and demos
ARCHS = {"small": (384, 12, 6), "base": (768, 12, 12), "tiny": (192, 4, 3)}


class PatchEmbed(nn.Module):
    """Cuts ``(B, 64, T)`` mels into 4-frame patches (mel-major) and projects them."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(PATCH_DIM, embed_dim)

    def forward(self, mel: Tensor) -> Tensor:
        batch, n_mels, frames = mel.shape
        n_tokens = frames // PATCH_FRAMES
        patches = mel[:, :, : n_tokens * PATCH_FRAMES].reshape(batch, n_mels, n_tokens, PATCH_FRAMES)
        # official flatten order inside a patch: index = mel * 4 + frame
        patches = patches.permute(0, 2, 1, 3).reshape(batch, n_tokens, PATCH_DIM)
        return self.patch_embed(patches)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        batch, n, dim = x.shape
        # strided views instead of a permuted copy: SDPA's CPU kernel takes them as they are
        qkv = self.qkv(x).view(batch, n, 3, self.num_heads, dim // self.num_heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, n, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, MLP_RATIO * dim)
        self.fc2 = nn.Linear(MLP_RATIO * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class ATSTEncoder(nn.Module):
    """ATST-Clip transformer over log-mel patches, with a CLS token and "cut" positions.

    Args:
        embed_dim: token width D (384 small, 768 base).
        depth: number of transformer blocks.
        num_heads: attention heads; defaults to ``embed_dim // 64``.
        n_positions: positional slots including CLS (251: 10 s).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int | None = None,
        n_positions: int = N_POSITIONS,
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(1, embed_dim // HEAD_DIM)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_embed = PatchEmbed(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_positions, embed_dim))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))  # used by masked pretraining only
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    @classmethod
    def from_arch(cls, arch: str) -> ATSTEncoder:
        """A randomly initialised encoder of a named size (``small``, ``base``, ``tiny``)."""
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        embed_dim, depth, num_heads = ARCHS[arch]
        return cls(embed_dim=embed_dim, depth=depth, num_heads=num_heads)

    @property
    def max_tokens(self) -> int:
        return self.pos_embed.shape[1] - 1

    def reset_parameters(self) -> None:
        """Initialisation of the official code: truncated normal (std 0.02) weights, zero biases."""
        for p in (self.pos_embed, self.mask_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def tokens(self, mel: Tensor) -> Tensor:
        """Embedded tokens with CLS and positions, ``(B, 1 + T // 4, D)``."""
        x = self.patch_embed(mel)
        n_tokens = x.shape[1]
        if n_tokens > self.max_tokens:
            raise ValueError(
                f"{n_tokens} tokens exceed the {self.max_tokens} positions of the encoder; "
                "chunk the input (pretrain.model.features does)"
            )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed[:, : n_tokens + 1]

    def block_outputs(
        self, mel: Tensor, n_valid_tokens: Tensor | None = None, *, n_last: int | None = None
    ) -> Iterator[Tensor]:
        """The outputs of the last ``n_last`` blocks through the final norm, one ``(B, 1 + N, D)``
        at a time (callers that reduce them never hold all layers at once).

        ``mel`` is ``(B, 64, T)``; ``n_valid_tokens`` (B,) masks the keys of padded tokens (CLS
        always valid).
        """
        n_last = self.depth if n_last is None else n_last
        if not 1 <= n_last <= self.depth:
            raise ValueError(f"n_last must be in 1..{self.depth}, got {n_last}")
        x = self.tokens(mel)
        key_mask = _key_padding_mask(n_valid_tokens, x.shape[1], x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, key_mask)
            if i >= self.depth - n_last:
                yield self.norm(x)

    def forward_blocks(self, mel: Tensor, n_valid_tokens: Tensor | None = None, *, n_last: int | None = None) -> Tensor:
        """The official ``get_intermediate_layers``: ``(n_last, B, 1 + N, D)``."""
        return torch.stack(list(self.block_outputs(mel, n_valid_tokens, n_last=n_last)))

    def forward(self, mel: Tensor, n_valid_tokens: Tensor | None = None) -> Tensor:
        """CLS output of the last block after the final norm, ``(B, D)`` (the pretraining target)."""
        return self.forward_blocks(mel, n_valid_tokens, n_last=1)[0, :, 0]


def _key_padding_mask(n_valid_tokens: Tensor | None, n_positions: int, device: torch.device) -> Tensor | None:
    """Boolean ``(B, 1, 1, N)`` mask, True where a key may be attended; None when all may."""
    if n_valid_tokens is None:
        return None
    positions = torch.arange(n_positions, device=device)
    valid = positions[None, :] <= n_valid_tokens.to(device)[:, None]  # CLS at 0 is always valid
    if bool(valid.all()):
        return None
    return valid[:, None, None, :]
