"""EVAR plugin: ATST-Clip and ATST-Frame through the atst-plugins package (``atst_evar``).

Copy this file into an EVAR checkout as ``evar/ar_atst_pkg.py`` (``python -m atst_evar.install
EVAR_DIR`` does it, with the configs and the import lines below), or by hand:

* ``evar/ar_atst_pkg.py``: this file;
* ``config/atst_clip_pkg.yaml`` and ``config/atst_frame_pkg.yaml``: from ``atst_evar/config/``;
* ``import evar.ar_atst_pkg`` beside the other ``import evar.ar_*`` lines of ``lineareval.py`` and
  ``finetune.py`` (EVAR builds ``eval('evar.' + cfg.audio_repr)``).

Then e.g. ``python lineareval.py config/atst_frame_pkg.yaml esc50 --options weight_file=/path/x.ckpt``.
"""

from evar.ar_base import BaseAudioRepr

from atst_evar.features import EvarATST


class AR_ATST_Pkg(BaseAudioRepr):  # noqa: N801 (EVAR's naming: AR_<model>)
    """Either family; the family and architecture are read from ``cfg.weight_file``."""

    def __init__(self, cfg):
        super().__init__(cfg=cfg)
        self.atst = EvarATST(self.cfg)

    def encode_frames(self, batch_audio):
        return self.atst.encode_frames(batch_audio)

    def forward(self, batch_audio):
        # EVAR's fine-tuning sets its augmentation with set_augment_tf_feature_fn; used in training only
        return self.atst(batch_audio, augment=self.augment_if_training)
