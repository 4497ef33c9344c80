"""ATST pretraining (both recipes) as a Lightning 2.x module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from pretrain.model.checkpoint import FORMAT_NAME, FORMAT_VERSION
from pretrain.model.encoder import ATSTEncoder
from pretrain.model.frontend import LogMelFrontEnd
from pretrain.runs import schedules
from pretrain.runs.divergence import check_loss, check_weights, every_process
from pretrain.runs.seeds import step_generator
from pretrain.training.config import PretrainConfig
from pretrain.training.recipes import RECIPES, crop_mels
from pretrain.training.teacher_student import TeacherStudent

REFERENCE_BATCH = 256  # the learning rate is given for this total batch size


class ATSTPretraining(pl.LightningModule):
    """Teacher-student pretraining of either recipe; the front end, the augmentations and the
    token masks are made batched on the device.

    ``hyper_parameters`` hold the run's configuration in plain types, the official names of the
    crop length and masking settings, the encoder's shape and this project's format tag, so
    ``pretrain.load_encoder`` (and atst_hear, atst_upstream) read the Lightning checkpoints directly.
    """

    def __init__(self, config: dict[str, Any], world_size: int = 1) -> None:
        super().__init__()
        self.config = PretrainConfig.from_dict(config)
        c = self.config
        recipe = RECIPES[c.family]
        torch.manual_seed(c.seed)
        encoder = ATSTEncoder.from_arch(c.arch, family=c.family, drop_path=c.drop_path)
        self.save_hyperparameters(
            {
                **c.to_dict(),
                **recipe.official_hparams(c),
                "world_size": world_size,
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "embed_dim": encoder.embed_dim,
                "depth": encoder.depth,
                "num_heads": encoder.num_heads,
            }
        )
        self.model = TeacherStudent(encoder, recipe, teacher_mode=c.teacher_mode)
        self.frontend = LogMelFrontEnd()
        self.views = recipe.views(c)
        total_batch = c.batch_size * world_size * c.accumulate_grad_batches
        self.peak_lr = c.base_lr * total_batch / REFERENCE_BATCH
        self.skipped_files = 0
        self._ema_step = -1

    # schedules at an optimizer step
    def lr_at(self, step: int) -> float:
        c = self.config
        return schedules.learning_rate(
            step, peak=self.peak_lr, final=c.final_lr, total_steps=c.max_steps, warmup_steps=c.warmup_steps
        )

    def wd_at(self, step: int) -> float:
        c = self.config
        return schedules.weight_decay(step, total_steps=c.max_steps, start=c.weight_decay_start, end=c.weight_decay_end)

    def ema_at(self, step: int) -> float:
        return schedules.ema_momentum(step, base=self.config.ema, total_steps=self.config.max_steps)

    def configure_optimizers(self):
        # official get_params_groups: no weight decay on biases and 1-D tensors (norms); 3-D
        # pos_embed / mask_embed / cls_token are decayed
        decay, no_decay = [], []
        for name, p in self.model.student.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.wd_at(0)}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr_at(0), eps=1e-6)  # transformers' AdamW default, as officially

    def make_views(self, wavs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(B, n_crops, n)`` crops -> two ``(B, 64, T)`` views and the token masks (Frame)."""
        generator = step_generator(self.config.seed, self.global_step, self.global_rank, wavs.device)
        with torch.no_grad():
            return self.views(crop_mels(self.frontend, wavs), generator)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        step = self.global_step
        lr, wd = self.lr_at(step), self.wd_at(step)
        for i, group in enumerate(self.optimizers().optimizer.param_groups):
            group["lr"] = lr
            if i == 0:
                group["weight_decay"] = wd
        if batch["skipped"]:
            self.skipped_files += len(batch["skipped"])
        self.log("data/skipped_files", float(self.skipped_files), reduce_fx="sum", sync_dist=True)
        if self.config.log_data_order:
            self._record_order(batch)
        if batch["wavs"].numel() == 0:
            every_process(self.trainer)(True)  # votes on the loss too, with nothing to train
            return None
        view_a, view_b, masks = self.make_views(batch["wavs"])
        loss, std_student, std_teacher = self.model(view_a, view_b, masks)
        check_loss(loss, step=step, lr=lr, agree=every_process(self.trainer))
        bs = view_a.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/std_student", std_student, batch_size=bs, sync_dist=True)
        self.log("train/std_teacher", std_teacher, prog_bar=True, batch_size=bs, sync_dist=True)
        if masks is not None:
            self.log("train/mask_fraction", masks.float().mean(), batch_size=bs, sync_dist=True)
        self.log("train/lr", lr, prog_bar=True, batch_size=bs)
        self.log("train/wd", wd, batch_size=bs)
        self.log("train/ema", self.ema_at(step), batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # after an optimizer step (not after every accumulated micro-batch); official: ema[global_step]
        if self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.model.update_teacher(self.ema_at(self.global_step))

    def _record_order(self, batch: dict) -> None:
        suffix = f".rank{self.global_rank}" if self.global_rank else ""
        record = {"step": self.global_step, "files": batch["names"], "skipped": batch["skipped"]}
        if "passes" in batch:
            record["passes"] = batch["passes"]
        with open(Path(self.config.run_dir) / f"data_order{suffix}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # no NaN checkpoint over a good one (every process votes: sharded weights differ per process)
        check_weights(self.model, step=self.global_step, agree=every_process(self.trainer))
        checkpoint["skipped_files"] = self.skipped_files

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_files = int(checkpoint.get("skipped_files", 0))
        self._ema_step = int(checkpoint.get("global_step", -1))
