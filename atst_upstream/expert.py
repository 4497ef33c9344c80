"""s3prl upstream expert for ATST-Clip (``-u atst -k model.ckpt``).

Follows s3prl 0.4.18's contract: ``forward`` takes a list of unpadded 1-D 16 kHz waveforms
and returns ``hidden_states``, the output of every transformer block through the final
norm (CLS removed), each ``(B, T, D)`` at one frame per 40 ms token (downsample rate 640).
Each clip's mel is computed at its own length and padded in the mel domain, with padded
keys masked, so a clip's features do not depend on its batch; clips longer than the
checkpoint's ``train_len`` are processed in ``train_len`` chunks on the token grid.
Padded frames (beyond a clip's own tokens) are zeros.
"""

from __future__ import annotations

from torch import Tensor, nn

from pretrain.model.encoder import PATCH_FRAMES
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.frontend import HOP_LENGTH

DOWNSAMPLE_RATE = PATCH_FRAMES * HOP_LENGTH  # 640 samples = 40 ms


class UpstreamExpert(nn.Module):
    """ATST-Clip encoder as an s3prl upstream; ``ckpt`` is any checkpoint ``pretrain`` reads.

    ``model_config`` (s3prl ``-g``) is accepted and ignored: the architecture is in the
    checkpoint. Other keywords s3prl passes (``refresh``) are ignored too.
    """

    def __init__(self, ckpt: str | None = None, model_config: str | None = None, **kwds) -> None:
        super().__init__()
        if not ckpt:
            raise ValueError("the atst upstream needs a checkpoint: pass -k /path/to/model.ckpt")
        self.extractor = ATSTFeatureExtractor.from_checkpoint(ckpt)
        self.name = "[ATST UpstreamExpert]"

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor] | Tensor]:
        layers, _ = self.extractor.layer_features(wavs, n_blocks=self.extractor.encoder.depth)
        hidden_states = list(layers.unbind(0))
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
