"""ATST-Clip and ATST-Frame in X-ARES (jimbozhang/xares, Interspeech 2025).

* ``atst_xares.encoder``: the encoder module xares loads (``ATSTXaresEncoder``; settings from
  ``ATST_CHECKPOINT``, ``ATST_BLOCKS``, ``ATST_PRECISION``).
* ``python -m atst_xares.run --checkpoint CKPT TASK...``: xares's stages on one checkpoint in its own
  working folder, with failures as a non-zero exit and the scores as JSON.
* ``python -m atst_xares.task HEAR_TASK_DIR OUT``: a HEAR 2021 task folder as an xares task.
"""
