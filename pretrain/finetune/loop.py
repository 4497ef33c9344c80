"""What every fine-tuning run shares, scene or event task: the epoch sampler and the Trainer."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import Sampler

from pretrain.finetune.recipe import FinetuneConfig
from pretrain.runs.seeds import mix_seed
from pretrain.runs.settings import lightning_devices


class EpochBatches(Sampler[list[int]]):
    """Full batches of a seeded permutation per epoch, each rank its share: a resumed run (from an
    epoch-end checkpoint) sees the epochs an uninterrupted run would."""

    def __init__(self, n: int, batch_size: int, *, seed: int, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.world = n, batch_size, seed, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        order = np.random.default_rng(mix_seed(self.seed, "finetune", self.epoch)).permutation(self.n)
        mine = order[rank :: self.world][: self.n // self.world]
        batch = min(self.batch_size, len(mine))
        for first in range(0, len(mine) - batch + 1, batch):
            yield mine[first : first + batch].tolist()

    def __len__(self) -> int:
        mine = self.n // self.world
        return max(mine // min(self.batch_size, mine), 1)


def make_trainer(
    config: FinetuneConfig, run_dir: Path, epochs: int, *, clip_grad: float | None = None
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer that validates every epoch and keeps ``best.ckpt`` (highest ``valid/score``) and
    ``last.ckpt``; gradients clipped at ``clip_grad`` (default: the scene recipe's ``clip_grad``)."""
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="valid/score", mode="max", save_last=True
    )
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=lightning_devices(config.devices),
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=epochs,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.clip_grad if clip_grad is None else clip_grad,
        use_distributed_sampler=False,
        callbacks=[best],
        logger=[
            TensorBoardLogger(run_dir, name="tensorboard"),
            CSVLogger(run_dir, name="csv", flush_logs_every_n_steps=config.log_every),
        ],
        log_every_n_steps=config.log_every,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        enable_model_summary=False,
    )
    return trainer, best
