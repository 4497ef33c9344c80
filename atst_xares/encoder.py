"""The X-ARES encoder for ATST-Clip and ATST-Frame checkpoints:
``python -m xares.run --max-jobs 0 atst_xares.encoder TASK...`` with ``ATST_CHECKPOINT`` set.

xares's contract (``xares.audio_encoder_checker.check_audio_encoder``, ``xares.task``): a module
holding exactly one name ending in ``Encoder`` (imported names count, so nothing here imports one),
an ``nn.Module`` built with no arguments, with ``sampling_rate``, ``output_dim`` and
``hop_size_in_ms``, whose ``forward`` takes a float32 ``[B, T]`` batch at ``sampling_rate`` and
returns ``[B, T', D]``. Settings come from the environment (``atst_xares.settings``):
``ATST_CHECKPOINT`` (required), ``ATST_BLOCKS`` (default ``mean``), ``ATST_PRECISION``.

Frames are the package's per-token features (``ATSTFeatureExtractor.layer_features``: the outputs
of the chosen blocks through the final norm, Clip's CLS left out) on its 40 ms token grid, clips
longer than the checkpoint's crop length in chunks of it, as ``atst_hear``'s timestamp
embeddings. Each clip is encoded at its own length (``atst_xares.padding``): frames past a clip's
end are zeros, so a clip's frames equal the clip alone's whatever its batch, and xares's clip
pooling (a mean over all stored frames, into a LayerNorm or a cosine kNN, both blind to scale)
sees the clip alone's direction. ``T'`` is the token count of the padded length (mel frames of the
centred STFT // 4), so frame targets line up across a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atst_xares.padding import unpadded_lengths
from atst_xares.settings import CHECKPOINT_ENV, EncoderSettings, settings_from_env
from pretrain.model.audio_input import check_batch
from pretrain.model.checkpoint import CheckpointError
from pretrain.model.encoder import PATCH_FRAMES
from pretrain.model.extractor import TOKEN_CENTRE_OFFSET_MS, TOKEN_HOP_MS, ATSTFeatureExtractor
from pretrain.model.frontend import MIN_SAMPLES, SAMPLE_RATE, n_frames

__all__ = ["ATSTXaresEncoder"]


class ATSTXaresEncoder(nn.Module):
    """An ATST checkpoint (either family, read from the file) as an X-ARES audio encoder.

    Args:
        settings: the checkpoint and options; default (what xares does): from the environment.
    """

    sampling_rate = SAMPLE_RATE
    hop_size_in_ms = TOKEN_HOP_MS
    frame_offset_ms = TOKEN_CENTRE_OFFSET_MS  # token k is centred at 40 k + 15 ms (atst_xares.task_config reads it)

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        super().__init__()
        from_env = settings is None
        self.settings = settings_from_env() if from_env else settings
        try:
            self.extractor = ATSTFeatureExtractor.from_checkpoint(
                self.settings.checkpoint, precision=self.settings.precision
            )
        except CheckpointError as err:
            if not from_env:
                raise
            # xares builds the class with no arguments: say where the path came from
            raise type(err)(f"{CHECKPOINT_ENV}={self.settings.checkpoint}: {err}") from None
        depth, dim = self.extractor.depth, self.extractor.encoder.embed_dim
        self.n_blocks = self.settings.n_blocks(depth)
        self.output_dim = self.settings.width(depth, dim)
        self.family = self.extractor.family
        self.eval()

    def forward(self, audio: Tensor) -> Tensor:
        """``[B, T]`` audio at 16 kHz (zero-padded) -> float32 ``[B, T', output_dim]`` on its device."""
        audio = check_batch(audio)
        if audio.shape[-1] < MIN_SAMPLES:  # shorter than one token: zero-padded to one, as its clips are
            audio = nn.functional.pad(audio, (0, MIN_SAMPLES - audio.shape[-1]))
        lengths = unpadded_lengths(audio)
        clips = [row[:n] for row, n in zip(audio, lengths.tolist(), strict=True)]
        with torch.no_grad():
            layers, _ = self.extractor.layer_features(clips, n_blocks=self.n_blocks)  # (B, T_max, n, D)
        frames = layers.mean(dim=2) if self.settings.blocks == "mean" else layers.flatten(2)
        n_out = n_frames(audio.shape[-1]) // PATCH_FRAMES
        if frames.shape[1] < n_out:
            frames = nn.functional.pad(frames, (0, 0, 0, n_out - frames.shape[1]))
        return frames.to(audio.device, torch.float32)
