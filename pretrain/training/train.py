"""Running a pretraining job: data, Lightning trainer, checkpoints, resume, export."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from pretrain.model.checkpoint import SAFETENSORS_FORMAT, load_encoder
from pretrain.runs.progress import StepProgressBar
from pretrain.runs.settings import lightning_devices
from pretrain.training.config import PretrainConfig
from pretrain.training.lightning_module import ATSTPretraining
from pretrain.training.probe import OnlineProbe
from pretrain.training.sources import open_source

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
TEACHER_EXPORT = "atst_teacher.safetensors"


class CropData(pl.LightningDataModule):
    """The run's data source (``pretrain.training.sources``) as Lightning's data module: an endless
    seeded sample order that resumes at the trainer's restored step."""

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__()
        self.config = config
        self.source = open_source(config)
        self.restored_layout: dict | None = None

    def layout(self) -> dict:
        """What fixes the sample order besides the seed: a resume under another layout warns."""
        c, trainer = self.config, self.trainer
        return {
            "source": self.source.kind,
            **self.source.layout(),
            "world_size": trainer.world_size if trainer is not None else None,
            "batch_size": c.batch_size,
            "accumulate_grad_batches": c.accumulate_grad_batches,
        }

    def state_dict(self) -> dict:
        return {"layout": self.layout()}

    def load_state_dict(self, state: dict) -> None:
        self.restored_layout = state.get("layout")

    def train_dataloader(self) -> DataLoader:
        c, trainer = self.config, self.trainer
        if self.restored_layout is not None and self.restored_layout != self.layout():
            log.warning(
                "resuming with another data layout (%s, was %s): steps and schedules continue, but samples of "
                "the current pass may repeat or be left out",
                self.layout(),
                self.restored_layout,
            )
        return self.source.dataloader(
            rank=trainer.global_rank,
            world=trainer.world_size,
            start_batch=trainer.global_step * c.accumulate_grad_batches,
            end_batch=c.max_steps * c.accumulate_grad_batches,
        )


def resume_path(config: PretrainConfig) -> str | None:
    if config.resume == "never":
        return None
    if config.resume == "auto":
        last = Path(config.run_dir) / CHECKPOINT_DIR / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(config.resume).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {config.resume}")
    return config.resume


def build_trainer(config: PretrainConfig) -> pl.Trainer:
    run_dir = Path(config.run_dir)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename="step{step:07.0f}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every,
        save_last=True,
        monitor="step",
        mode="max",
        save_top_k=config.keep_checkpoints,
    )
    # CSV rows reach the disk at every logging step, so a killed run keeps its curves up to its last log
    csv_logger = CSVLogger(run_dir, name="csv", flush_logs_every_n_steps=config.log_every)
    loggers = [TensorBoardLogger(run_dir, name="tensorboard"), csv_logger]
    callbacks: list[pl.Callback] = [checkpoints, StepProgressBar()]
    if config.probe_tasks():
        every = config.probe_every or max(1, config.max_steps // 5)
        probe = OnlineProbe(config.probe_tasks(), every=every, chunk_seconds=config.crop_seconds, run_dir=run_dir)
        callbacks.append(probe)
    devices = lightning_devices(config.devices)
    multi = (isinstance(devices, int) and devices > 1) or isinstance(devices, list) or config.num_nodes > 1
    # SyncBatchNorm needs CUDA; CPU processes (gloo) keep per-process batch statistics
    on_gpu = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_steps=config.max_steps,
        accumulate_grad_batches=config.accumulate_grad_batches,
        sync_batchnorm=multi and on_gpu,
        use_distributed_sampler=False,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=config.log_every,
        default_root_dir=run_dir,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=True,
    )


def train(config: PretrainConfig) -> Path:
    """Run (or resume) a pretraining job; returns the final checkpoint."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, workers=True)
    data = CropData(config)
    trainer = build_trainer(config)
    module = ATSTPretraining(config.to_dict(), world_size=trainer.world_size)
    ckpt = resume_path(config)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)  # resuming runs no code from the file
    final = run_dir / CHECKPOINT_DIR / "final.ckpt"
    trainer.save_checkpoint(final, weights_only=False)  # the whole state (optimizer, loops), as last.ckpt
    if trainer.is_global_zero:
        export_teacher(final, run_dir / TEACHER_EXPORT)
        log.info("skipped %d unreadable files; final checkpoint %s", module.skipped_files, final)
    return final


def export_teacher(checkpoint: str | Path, out: str | Path) -> Path:
    """The encoder of any checkpoint alone, as safetensors with its family and shape in the metadata."""
    from safetensors.torch import save_file

    encoder, spec = load_encoder(checkpoint)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "family": spec.family,
        "embed_dim": str(spec.embed_dim),
        "depth": str(spec.depth),
        "num_heads": str(spec.num_heads),
        "crop_seconds": str(spec.crop_seconds),
        "arch": spec.arch or "",
    }
    out = Path(out)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out), metadata=metadata)
    return out
