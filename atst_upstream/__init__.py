"""s3prl upstream for ATST-Clip and ATST-Frame: ``expert.py`` + ``hubconf.py`` in s3prl's upstream layout.

Use it through the launcher (``python -m atst_upstream.run_downstream -u atst -k CKPT ...``)
or copy this folder to ``s3prl/upstream/atst/`` and add
``from s3prl.upstream.atst.hubconf import *`` to ``s3prl/hub.py``.
"""
