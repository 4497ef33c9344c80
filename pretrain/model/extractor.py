"""Front end + encoder + the two feature protocols, as one module the adapters share (both families)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pretrain.model.audio_input import AudioInputError, check_clips
from pretrain.model.checkpoint import EncoderSpec, load_encoder
from pretrain.model.encoder import PATCH_FRAMES, ATSTEncoder
from pretrain.model.features import DEFAULT_CHUNKS_PER_PASS, layer_features, scene_embedding
from pretrain.model.frontend import HOP_LENGTH, SAMPLE_RATE, LogMelFrontEnd

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
TOKEN_HOP_MS = 1000 * PATCH_FRAMES * HOP_LENGTH / SAMPLE_RATE  # 40.0
# Token k covers mel frames 4k .. 4k+3 (10 ms apart); its centre is 1.5 frames after the first.
TOKEN_CENTRE_OFFSET_MS = 1.5 * 1000 * HOP_LENGTH / SAMPLE_RATE  # 15.0
MIN_CHUNK_SECONDS = 0.5
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def center_crop(wav: Tensor, n_samples: int) -> Tensor:
    """The middle ``n_samples`` of a clip (shorter clips unchanged), as the official linear eval."""
    if wav.shape[-1] <= n_samples:
        return wav
    start = (wav.shape[-1] - n_samples) // 2
    return wav[..., start : start + n_samples]


class ATSTFeatureExtractor(nn.Module):
    """Waveforms at 16 kHz -> ATST features (scene embeddings or per-token layers), either family.

    Args:
        encoder: the transformer.
        crop_seconds: crop length the encoder was trained on (Clip ``train_len``, Frame
            ``anchor_len``; default: the family's official value); sets the default chunk length.
        chunk_seconds: chunk length for long clips (default ``crop_seconds``).
        chunks_per_pass: chunks per forward pass (bounds memory on long audio).
        precision: "float32" (default, exact), or "bfloat16" / "float16" to run the encoder under
            autocast (front end and outputs stay float32; about 1e-2 relative to float32).
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        encoder: ATSTEncoder,
        *,
        crop_seconds: float | None = None,
        chunk_seconds: float | None = None,
        chunks_per_pass: int = DEFAULT_CHUNKS_PER_PASS,
        precision: str = "float32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.frontend = LogMelFrontEnd()
        self.encoder = encoder
        self.crop_seconds = encoder.family.crop_seconds if crop_seconds is None else float(crop_seconds)
        chunk_seconds = self.crop_seconds if chunk_seconds is None else float(chunk_seconds)
        longest = encoder.max_tokens * PATCH_FRAMES / FRAMES_PER_SECOND
        if not MIN_CHUNK_SECONDS <= chunk_seconds <= longest:
            raise ValueError(f"chunk_seconds must be in {MIN_CHUNK_SECONDS}..{longest:g} s, got {chunk_seconds}")
        if int(chunks_per_pass) < 1:
            raise ValueError(f"chunks_per_pass must be >= 1, got {chunks_per_pass}")
        self.chunk_seconds = chunk_seconds
        self.chunks_per_pass = int(chunks_per_pass)
        # official: int(crop_seconds * 100 + 1) frames for the scene protocol
        self.scene_chunk_frames = int(chunk_seconds * FRAMES_PER_SECOND + 1)
        self.chunk_tokens = int(round(chunk_seconds * FRAMES_PER_SECOND)) // PATCH_FRAMES
        self.spec: EncoderSpec | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options) -> ATSTFeatureExtractor:
        """Load the teacher encoder of any supported checkpoint (see ``pretrain.model.checkpoint``)."""
        encoder, spec = load_encoder(path)
        extractor = cls(encoder, crop_seconds=spec.crop_seconds, **options)
        extractor.spec = spec
        return extractor.eval()

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    @property
    def family(self) -> str:
        return self.encoder.family.name

    def scene_embedding_size(self, n_blocks: int) -> int:
        """Clip: CLS and token mean per block; Frame: token mean per block."""
        return self.encoder.family.scene_width(n_blocks, self.encoder.embed_dim)

    def check_n_blocks(self, n_blocks: int) -> int:
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= self.encoder.depth:
            raise ValueError(f"n_blocks must be an int in 1..{self.encoder.depth}, got {n_blocks!r}")
        return n_blocks

    def _encoder_precision(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    @property
    def depth(self) -> int:
        return self.encoder.depth

    # --- the steps: waveforms -> mels -> features ---------------------------------------------
    def mels(self, wavs: Sequence[Tensor] | Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Checked clips -> padded mels ``(B, 64, T)`` and frames per clip, on the model's device.

        ``wavs`` is a list of 1-D clips, or a zero-padded ``(B, n)`` batch with its ``lengths`` in
        samples (each clip's mel is computed at its own length, as officially, then padded).
        """
        if lengths is not None:
            wavs = [w[:n] for w, n in zip(wavs, lengths.tolist(), strict=True)]
        clips = check_clips(wavs)
        mels, frames = self.frontend.batch([w.to(self.device) for w in clips])
        # Finite samples can still overflow float32 in the power spectrum (|x| of about 1e17 and up):
        # such a clip would give NaN features, so it is refused by name.
        finite = torch.isfinite(mels).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
            peak = float(clips[bad[0]].abs().max())
            raise AudioInputError(
                f"clip {bad[0]} (of {len(bad)} such) overflows the log-mel front end (peak |sample| {peak:.3g}; "
                "audio is expected in [-1, 1])"
            )
        return mels, frames

    def scene_embeddings_of_mels(self, mels: Tensor, lengths: Tensor, *, n_blocks: int) -> Tensor:
        """The official linear-evaluation features of padded mels: ``(B, scene_embedding_size(n_blocks))``.
        Differentiable (fine-tuning) unless called under ``no_grad``."""
        with self._encoder_precision():
            emb = scene_embedding(
                self.encoder,
                mels,
                lengths,
                n_blocks=self.check_n_blocks(n_blocks),
                chunk_frames=self.scene_chunk_frames,
                chunks_per_pass=self.chunks_per_pass,
            )
        return emb.float()

    def layer_features_of_mels(self, mels: Tensor, lengths: Tensor, *, n_blocks: int) -> tuple[Tensor, Tensor]:
        """Per-token features ``(B, T_max, n_blocks, D)`` of padded mels (40 ms hop), tokens per clip."""
        with self._encoder_precision():
            layers, n_tokens = layer_features(
                self.encoder,
                mels,
                lengths,
                n_blocks=self.check_n_blocks(n_blocks),
                chunk_tokens=self.chunk_tokens,
                chunks_per_pass=self.chunks_per_pass,
            )
        return layers.float(), n_tokens

    def scene_embeddings(self, wavs: Sequence[Tensor], *, n_blocks: int) -> Tensor:
        """Official linear-evaluation features of each clip: ``(B, scene_embedding_size(n_blocks))``."""
        return self.scene_embeddings_of_mels(*self.mels(wavs), n_blocks=n_blocks)

    def layer_features(self, wavs: Sequence[Tensor], *, n_blocks: int) -> tuple[Tensor, Tensor]:
        """Per-token features ``(B, T_max, n_blocks, D)`` (40 ms hop) and tokens per clip."""
        return self.layer_features_of_mels(*self.mels(wavs), n_blocks=n_blocks)
