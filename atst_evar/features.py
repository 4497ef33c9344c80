"""The features behind the EVAR plugin (``ar_atst_pkg.AR_ATST_Pkg``), with no EVAR import, so they
are tested where EVAR is not installed.

EVAR (nttcslab/eval-audio-repr) calls ``forward(batch_audio)`` for linear evaluation and
fine-tuning (``[B, samples]`` at 16 kHz, every clip cut or zero-padded to the task's unit length by
EVAR) and names ``encode_frames`` its per-frame template. Here ``forward`` gives ``atst_hear``'s
scene embeddings (the official linear-evaluation features of the checkpoint's family over its
last ``n_blocks`` blocks) and ``encode_frames`` its timestamp embeddings as ``[B, D, T]``, EVAR's
frame layout. Unlike EVAR's own ATST wrappers (``evar/ar_atst.py``, ``evar/ar_atst_frame.py``):
no audiossl checkout, the device EVAR moves the module to (CPU or CUDA), and strict loading (a
file that does not fit the architecture is an error, never half-loaded weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from pretrain.model.audio_input import check_batch
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.features import DEFAULT_CHUNKS_PER_PASS


class EvarConfigError(ValueError):
    """An EVAR config the checkpoint does not fit (``feature_d``, ``n_blocks``, ``sample_rate``)."""


class EvarATST(nn.Module):
    """An ATST checkpoint (either family) as EVAR's audio representation; settings from its yaml:
    ``weight_file``, ``n_blocks``, ``feature_d`` (checked against the checkpoint), and optionally
    ``chunk_seconds`` and ``precision``."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        if int(cfg.get("sample_rate", 16000)) != 16000:
            raise EvarConfigError(f"ATST takes 16 kHz audio; the config has sample_rate {cfg['sample_rate']}")
        if not cfg.get("weight_file"):
            raise EvarConfigError("the config names no weight_file (an ATST checkpoint of either family)")
        self.extractor = ATSTFeatureExtractor.from_checkpoint(
            str(cfg["weight_file"]),
            chunk_seconds=cfg.get("chunk_seconds"),
            chunks_per_pass=int(cfg.get("chunks_per_pass", DEFAULT_CHUNKS_PER_PASS)),
            precision=str(cfg.get("precision", "float32")),
        )
        self.n_blocks = self.extractor.check_n_blocks(int(cfg.get("n_blocks", 1)))
        self.family = self.extractor.family
        self.feature_d = self.extractor.scene_embedding_size(self.n_blocks)
        stated = cfg.get("feature_d")
        if stated is not None and int(stated) != self.feature_d:
            raise EvarConfigError(
                f"feature_d {stated} in the config, but {cfg['weight_file']} (ATST-{self.family.capitalize()}, "
                f"{self.extractor.depth} blocks of {self.extractor.encoder.embed_dim}) gives {self.feature_d} "
                f"with n_blocks {self.n_blocks}: set feature_d: {self.feature_d}"
            )

    def forward(self, batch_audio: Tensor, augment: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``[B, samples]`` -> scene embeddings ``[B, feature_d]`` (differentiable: EVAR fine-tunes it).

        ``augment``: EVAR's fine-tuning augmentation (``BaseAudioRepr.augment_if_training``: SpecAugment
        and random resize crop), applied to the log-mels ``[B, 1, 64, T]`` as EVAR's ATST wrapper
        applies it to its filterbanks."""
        audio = check_batch(batch_audio)
        mels, frames = self.extractor.mels(list(audio))
        if augment is not None:
            mels = augment(mels.unsqueeze(1)).squeeze(1)
        return self.extractor.scene_embeddings_of_mels(mels, frames, n_blocks=self.n_blocks).to(audio.device)

    def encode_frames(self, batch_audio: Tensor) -> Tensor:
        """``[B, samples]`` -> per-token features ``[B, n_blocks * D, T]`` (40 ms apart)."""
        audio = check_batch(batch_audio)
        layers, _ = self.extractor.layer_features(list(audio), n_blocks=self.n_blocks)
        return layers.flatten(2).transpose(1, 2).to(audio.device)
