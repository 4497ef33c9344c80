"""The official fine-tuning recipe as a Lightning module (audiossl ``methods/atst/downstream/``,
``methods/atstframe/downstream/``).

The encoder's feature (Clip: ``[CLS ; token mean]`` of the last block; Frame: the token mean of
``norm_frame``; both averaged over chunks of the trained crop length by the official scene
protocol, ``pretrain.model.features.scene_embedding``) goes into ``BatchNorm1d(affine=False)`` and
a ``Linear`` head (N(0, 0.01) weights, zero bias). SGD with momentum, layer-wise learning-rate
decay, linear warm-up then per-step cosine, gradient clipping (the Trainer's), drop path over the
blocks. Label mixup and Random Resize Crop run batched on the training device, like the
pretraining views. Deliberate differences from the official code, which mixes in its data-loader
workers one clip at a time:

* the mixup partners of a batch are drawn from the bank as it was before the batch (then the
  batch is appended), and the bank lives on the device and starts empty after a resume;
* random numbers come from a generator seeded by (seed, step, rank), so a resumed run repeats them.

With ``frozen=True`` the module is the frozen baseline: precomputed features of all blocks (the
official linear evaluation's) into the same head; the encoder is not part of it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.finetune.metrics import task_scores
from pretrain.finetune.recipe import FinetuneConfig
from pretrain.model.checkpoint import inspect_checkpoint
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.family import FAMILIES
from pretrain.runs.augment import RandomResizeCrop
from pretrain.runs.divergence import check_loss, check_weights, every_process
from pretrain.runs.schedules import learning_rate
from pretrain.runs.seeds import step_generator

REFERENCE_BATCH = 256  # the scripts' learning rates are given for this total batch
HEAD_INIT_STD = 0.01
EMBEDDING_PARAMS = ("patch_embed", "cls_token", "pos_embed", "mask_embed")


def layer_scale(name: str, depth: int, decay: float) -> float:
    """Learning-rate scale of an encoder parameter: block ``i`` gets ``decay ** (depth - i)``, the
    patch / position / mask / CLS embeddings ``decay ** depth``, the final norm ``decay``."""
    if name.startswith("blocks."):
        return decay ** (depth - int(name.split(".")[1]))
    if name.split(".")[0] in EMBEDDING_PARAMS:
        return decay**depth
    return decay  # the final norm (``norm`` or ``norm_frame``)


class LabelMixup(nn.Module):
    """``x <- lam x + (1 - lam) x'``, ``y <- lam y + (1 - lam) y'`` with ``lam ~ Beta(alpha, alpha)`` per
    clip and ``(x', y')`` drawn from a FIFO bank of earlier (mel, label) pairs."""

    def __init__(self, *, alpha: float, memory: int) -> None:
        super().__init__()
        self.alpha, self.memory = alpha, memory
        self.register_buffer("bank_x", torch.empty(0), persistent=False)
        self.register_buffer("bank_y", torch.empty(0), persistent=False)
        self.filled = self.position = 0

    def forward(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        batch, width = x.shape[0], x.shape[-1]
        if self.bank_x.shape[1:2] != x.shape[1:2] or self.bank_x.device != x.device:
            self.bank_x = x.new_zeros(self.memory, x.shape[1], width)
            self.bank_y = y.new_zeros(self.memory, y.shape[1])
            self.filled = self.position = 0
        lam = None
        if self.filled:
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator, device=generator.device)))
            lam = torch.as_tensor(rng.beta(self.alpha, self.alpha, batch), dtype=x.dtype, device=x.device)
            partner = torch.as_tensor(rng.integers(0, self.filled, batch), device=x.device)
            other = self.bank_x[partner]
            other = F.pad(other[..., :width], (0, max(width - other.shape[-1], 0)))
            mixed_x = lam[:, None, None] * x + (1 - lam[:, None, None]) * other
            mixed_y = lam[:, None] * y + (1 - lam[:, None]) * self.bank_y[partner]
        else:
            mixed_x, mixed_y = x, y
        keep = min(batch, self.memory)
        slots = (self.position + torch.arange(keep, device=x.device)) % self.memory
        stored = x[-keep:].detach()[..., : self.bank_x.shape[-1]]
        self.bank_x[slots] = F.pad(stored, (0, self.bank_x.shape[-1] - stored.shape[-1]))
        self.bank_y[slots] = y[-keep:].detach()
        self.position = (self.position + keep) % self.memory
        self.filled = min(self.filled + keep, self.memory)
        return mixed_x, mixed_y, lam


class FinetuneModule(pl.LightningModule):
    """Encoder + head (fine-tuning), or head alone on precomputed features (``frozen``)."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        checkpoint: str,
        labels: list[str],
        multilabel: bool,
        frozen: bool,
        steps_per_epoch: int,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = self.config = FinetuneConfig(**config)
        self.multilabel, self.frozen = multilabel, frozen
        if frozen:  # the features come precomputed: only their width is needed, read without the weights
            spec = inspect_checkpoint(checkpoint).spec
            feature_dim = FAMILIES[spec.family].scene_width(spec.depth, spec.embed_dim)
            self.extractor = None
        else:
            extractor = self.extractor = ATSTFeatureExtractor.from_checkpoint(checkpoint)
            depth = extractor.encoder.depth
            feature_dim = extractor.scene_embedding_size(1)
            # only Frame pretraining uses the mask token: a parameter without gradients stalls DDP
            extractor.encoder.mask_embed.requires_grad_(False)
            for i, block in enumerate(extractor.encoder.blocks):
                block.drop_path_rate = c.drop_path * i / max(depth - 1, 1)
        self.head = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, len(labels)))
        nn.init.normal_(self.head[1].weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head[1].bias)
        use_mixup = not frozen and c.mixup_alpha > 0
        self.mixup = LabelMixup(alpha=c.mixup_alpha, memory=c.mixup_memory) if use_mixup else None
        self.rrc = RandomResizeCrop(virtual_crop_scale=1.5) if (not frozen and c.rrc) else None
        epochs, batch = (c.frozen_epochs, c.frozen_batch_size) if frozen else (c.epochs, c.batch_size)
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = 0 if frozen else c.warmup_epochs * steps_per_epoch
        base = c.frozen_lr if frozen else c.lr
        self.peak_lr = base * batch * world_size * c.accumulate_grad_batches / REFERENCE_BATCH
        self.final_lr = 0.0 if frozen else c.final_lr
        self._outputs: list[tuple[Tensor, Tensor]] = []

    # --- features -------------------------------------------------------------------------
    def features(self, batch: dict, *, augment: bool) -> tuple[Tensor, Tensor]:
        """The head's input and the (possibly mixed) targets of a batch."""
        targets = batch["targets"]
        if self.frozen:
            return batch["features"], targets
        mels, lengths = self.extractor.mels(batch["wavs"], batch["lengths"])
        if augment:
            generator = step_generator(self.config.seed, self.global_step, self.global_rank, mels.device)
            with torch.no_grad():
                if self.mixup is not None:
                    mels, targets, _ = self.mixup(mels, targets, generator)
                if self.rrc is not None:
                    mels = self.rrc(mels, generator)
        return self.extractor.scene_embeddings_of_mels(mels, lengths, n_blocks=1), targets

    def forward(self, batch: dict) -> Tensor:
        return self.head(self.features(batch, augment=False)[0])

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.multilabel or self.mixup is not None:  # official: BCE on (mixed) one-hot targets
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets.argmax(1))

    # --- schedule and optimiser ---------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return learning_rate(
            step, peak=self.peak_lr, final=self.final_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps
        )

    def configure_optimizers(self):
        c = self.config
        groups: dict[float, list] = {}
        if self.extractor is not None:
            depth = self.extractor.encoder.depth
            for name, p in self.extractor.encoder.named_parameters():
                if p.requires_grad:
                    groups.setdefault(layer_scale(name, depth, c.layer_decay), []).append(p)
        groups.setdefault(1.0, []).extend(self.head.parameters())
        params = [
            {"params": ps, "lr_scale": scale, "lr": self.lr_at(0) * scale} for scale, ps in sorted(groups.items())
        ]
        return torch.optim.SGD(params, lr=self.lr_at(0), momentum=c.momentum, weight_decay=c.weight_decay)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        lr = self.lr_at(self.global_step)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        feats, targets = self.features(batch, augment=True)
        loss = self.loss(self.head(feats), targets)
        check_loss(loss, step=self.global_step, lr=lr, agree=every_process(self.trainer))
        size = targets.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/lr", lr, prog_bar=True, batch_size=size)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_weights(self, step=self.global_step, agree=every_process(self.trainer))  # no NaN checkpoint

    # --- validation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs.append((self(batch).float().cpu(), batch["targets"].cpu()))

    def on_validation_epoch_end(self) -> None:
        scores, targets = (torch.cat(t) for t in zip(*self._outputs, strict=True))
        self._outputs.clear()
        for name, value in task_scores(self.activate(scores), targets, multilabel=self.multilabel).items():
            self.log(f"valid/{name}", value, prog_bar=True)
            self.log("valid/score", value)  # the one the checkpoint is selected on

    def activate(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def steps_per_epoch(n_train: int, *, batch_size: int, world_size: int, accumulate: int) -> int:
    """Optimizer steps per epoch with the run's sampler (each rank's share, full batches only)."""
    per_rank = n_train // world_size
    return max(math.ceil(max(per_rank // batch_size, 1) / accumulate), 1)
