"""A progress bar that counts optimizer steps of ``max_steps``, with the time left.

Lightning's bars count the batches of an epoch, and a step-bounded run has no last epoch: its
default (Rich, where ``rich`` is installed) printed ``Epoch 0/-2 ... 120/120``. A resumed run starts
the bar at the restored step, so the estimate of the time left comes from this session's rate.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``pretraining: 37%|...| 44/120 [00:21<00:37, 2.05 step/s, train/loss=...]``."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def init_train_tqdm(self):  # noqa: ANN201 - tqdm's type
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version says nothing about the run's progress
        return metrics

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per run: the loader's "epochs" do not restart the count
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step
            bar.set_description("pretraining")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if step != bar.n and (step - bar.n >= self.refresh_rate or step >= trainer.max_steps):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
