"""ATST-Clip and ATST-Frame in EVAR (nttcslab/eval-audio-repr): the plugin ``ar_atst_pkg.py`` (a
``BaseAudioRepr`` for EVAR's ``evar/``), its configs (``config/atst_{clip,frame}_pkg.yaml``), the
features behind it (``atst_evar.features.EvarATST``) and ``python -m atst_evar.install EVAR_DIR``."""
