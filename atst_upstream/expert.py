"""s3prl upstream expert for ATST-Clip and ATST-Frame (``-u atst -k model.ckpt``).

Follows s3prl 0.4.18's contract: ``forward`` takes a list of unpadded 1-D 16 kHz waveforms
and returns ``hidden_states``, the output of every transformer block through the final
norm (Clip: ``norm``, CLS removed; Frame: ``norm_frame``), each ``(B, T, D)`` at one frame
per 40 ms token (downsample rate 640). Each clip's mel is computed at its own length and
padded in the mel domain, with padded keys masked, so a clip's features do not depend on its
batch; clips longer than the checkpoint's crop length (Clip ``train_len`` 6 s, Frame
``anchor_len`` 10 s) are processed in chunks of that length on the token grid. Padded frames
(beyond a clip's own tokens) are zeros.
"""

from __future__ import annotations

from torch import Tensor, nn

from pretrain.model.encoder import PATCH_FRAMES
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.frontend import HOP_LENGTH

DOWNSAMPLE_RATE = PATCH_FRAMES * HOP_LENGTH  # 640 samples = 40 ms


class UpstreamExpert(nn.Module):
    """An ATST encoder as an s3prl upstream; ``ckpt`` is any checkpoint ``pretrain`` reads, or a
    registered name (``atst-frame-base``, ...: downloaded and verified on first use).

    ``family`` ("clip" / "frame"), when given, must match the checkpoint's. ``model_config``
    (s3prl ``-g``) is accepted and ignored: the architecture is in the checkpoint. Other
    keywords s3prl passes (``refresh``) are ignored too.
    """

    def __init__(
        self, ckpt: str | None = None, model_config: str | None = None, *, family: str | None = None, **kwds
    ) -> None:
        super().__init__()
        if not ckpt:
            raise ValueError("the atst upstream needs a checkpoint: pass -k PATH, or -k NAME such as atst-frame-base")
        self.extractor = ATSTFeatureExtractor.from_checkpoint(ckpt)
        found = self.extractor.family
        if family is not None and found != family:
            raise ValueError(
                f"-u atst_{family} needs an ATST-{family.capitalize()} checkpoint, but {ckpt} holds "
                f"ATST-{found.capitalize()}; use -u atst (either family) or -u atst_{found}"
            )
        self.name = f"[ATST-{found.capitalize()} UpstreamExpert]"

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor] | Tensor]:
        layers, _ = self.extractor.layer_features(wavs, n_blocks=self.extractor.depth)
        hidden_states = list(layers.unbind(2))
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
