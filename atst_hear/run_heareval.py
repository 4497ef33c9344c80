"""Run hear-eval-kit 2021.1.3 on a current stack, without editing it.

    python -m atst_hear.run_heareval embeddings atst_hear --model CKPT --tasks-dir tasks [--model-options JSON]
    python -m atst_hear.run_heareval predictions embeddings/atst_hear/<task> [heareval flags]

The arguments are heareval's own (``heareval.embeddings.runner``,
``heareval.predictions.runner``). Before handing over, the launcher makes three
run-time adjustments, each of a known incompatibility:

* predictions: heareval picks the event post-processing of the best validation epoch by
  assigning ``trainer.fit_loop.current_epoch`` before testing; pytorch-lightning >= 1.6
  ignores that assignment, so every event task that scores for early stopping (the default,
  e.g. dcase2016_task2) dies with a ``KeyError`` at test time (hear-eval-kit issue #432).
  The launcher gives ``FitLoop`` a ``current_epoch`` property whose setter records the epoch
  where Lightning reads it (``epoch_progress.current.completed``).
* predictions on torch >= 2.6: heareval reloads its own Lightning checkpoints, which pickle
  ``torch.nn`` classes; ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set for that process (it
  loads only files heareval itself just wrote).
* embeddings on a CUDA machine: heareval refuses to start when TensorFlow sees no GPU
  (``tensorflow-cpu``), which only matters to TensorFlow models, and its GPU memory probe
  calls ``.decode()`` on the ``str`` current nvidia-ml-py returns; both are bridged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import torch

from pretrain.extras import extras_named

log = logging.getLogger("atst_hear.run_heareval")
USAGE = "usage: python -m atst_hear.run_heareval {embeddings,predictions} [heareval arguments]"


def _record_epoch_where_lightning_reads_it() -> None:
    from pytorch_lightning.loops import FitLoop

    def get(loop: FitLoop) -> int:
        return loop.epoch_progress.current.completed

    def set_(loop: FitLoop, epoch: int) -> None:
        loop.epoch_progress.current.completed = epoch

    if not isinstance(getattr(FitLoop, "current_epoch", None), property):
        FitLoop.current_epoch = property(get, set_)


def _bridge_gpu_checks() -> None:
    if not torch.cuda.is_available():
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        log.warning("TensorFlow sees no GPU (tensorflow-cpu); skipping heareval's TensorFlow GPU check")
        tf.test.is_gpu_available = lambda *args, **kwargs: True
    import heareval.gpu_max_mem as gpu_max_mem

    name_of = getattr(gpu_max_mem, "nvmlDeviceGetName", None)
    if name_of is not None:

        def name_as_bytes(handle):
            name = name_of(handle)
            return name.encode() if isinstance(name, str) else name

        gpu_max_mem.nvmlDeviceGetName = name_as_bytes


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("embeddings", "predictions"):
        raise SystemExit(USAGE)
    command, rest = argv[0], argv[1:]
    with extras_named("python -m atst_hear.run_heareval"):
        if command == "embeddings":
            _bridge_gpu_checks()
            from heareval.embeddings.runner import runner
        else:
            if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
                os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
            _record_epoch_where_lightning_reads_it()
            from heareval.predictions.runner import runner
    runner.main(args=rest, prog_name=f"python -m atst_hear.run_heareval {command}")


if __name__ == "__main__":
    main()
