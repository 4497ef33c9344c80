"""Checkpoint files made the way the official ones were: by real training code.

* ``lightning_run_checkpoint``: a real Lightning Trainer run (CPU, a few steps) of a module laid
  out like the official ``ATSTLightningModule`` (``model.student.{encoder,projector,predictor}``,
  ``model.teacher.{encoder,projector}``) whose training step writes NumPy schedule values into
  the optimizer (``param_group["lr"] = self.mylr_scheduler[self.global_step]``, as
  audiossl/methods/atst/model.py does), with ModelCheckpoint and LearningRateMonitor. The
  teacher encoder starts from given weights and follows the student by EMA with NumPy momentum
  values of 1.0, so it ends bit-identical to them (its features can be checked against the
  parity fixture) while the file carries everything a real run writes.
* ``dino_style_checkpoint``: ``{student, teacher, optimizer, epoch, args, byol_loss}`` as the
  official DINO-style trainer saves it, with the state of a real AdamW whose groups hold NumPy
  values.
* ``with_numpy1_names``: the same file as NumPy 1.x would have written it (``numpy.core.*``
  globals instead of ``numpy._core.*``), by rewriting the pickle's GLOBAL opcodes.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.model.encoder import ATSTEncoder
from pretrain.training.teacher_student import projection_head

HEAD_OUT = 256


def official_schedule(base: float, final: float, steps: int, warmup: int = 0) -> np.ndarray:
    """The official per-step NumPy schedule (linear warm-up, then cosine)."""
    warm = np.linspace(0, base, warmup) if warmup else np.array([])
    iters = np.arange(steps - warmup)
    return np.concatenate((warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))


class _Branch(nn.Module):
    def __init__(self, encoder: ATSTEncoder, predictor: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projection_head(encoder.embed_dim)
        if predictor:
            self.predictor = projection_head(HEAD_OUT)


class _StudentTeacher(nn.Module):
    def __init__(self, student: ATSTEncoder, teacher: ATSTEncoder) -> None:
        super().__init__()
        self.student = _Branch(student, predictor=True)
        self.teacher = _Branch(teacher, predictor=False)
        self.teacher.requires_grad_(False)


def _official_style_module(teacher_weights: Mapping[str, torch.Tensor], family: str, max_steps: int):
    import lightning.pytorch as pl

    class OfficialStyleATST(pl.LightningModule):
        def __init__(self, **hparams) -> None:
            super().__init__()
            self.save_hyperparameters()  # Lightning 2 writes them as a plain dict
            torch.manual_seed(0)
            student = ATSTEncoder.from_arch(hparams["arch"], family=family)
            teacher = ATSTEncoder.from_arch(hparams["arch"], family=family)
            teacher.load_state_dict(teacher_weights)
            self.model = _StudentTeacher(student, teacher)
            self.mylr_scheduler = official_schedule(hparams["learning_rate"], 1e-6, max_steps, 1)
            self.mywd_scheduler = official_schedule(0.04, 0.4, max_steps)
            self.ema_scheduler = np.ones(max_steps)  # 1.0: the teacher keeps its weights exactly

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers(use_pl_optimizer=False)
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = self.mylr_scheduler[self.global_step]  # numpy.float64, as officially
                if i == 0:
                    group["weight_decay"] = self.mywd_scheduler[self.global_step]
            student = self.model.student
            out = student.predictor(student.projector(student.encoder(batch[0])[:, 0]))
            self.log("loss", out.pow(2).mean())
            return out.pow(2).mean()

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            m = self.ema_scheduler[self.global_step - 1]
            with torch.no_grad():
                for part in ("encoder", "projector"):
                    t = getattr(self.model.teacher, part).parameters()
                    s = getattr(self.model.student, part).parameters()
                    for pt, ps in zip(t, s, strict=True):
                        pt.mul_(m).add_((1 - m) * ps)

        def configure_optimizers(self):
            params = [p for p in self.model.student.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=float(self.mylr_scheduler[0]))

    return OfficialStyleATST


def lightning_run_checkpoint(
    out_dir: Path, teacher_weights: Mapping[str, torch.Tensor], *, family: str = "clip", steps: int = 3
) -> Path:
    """Train an official-style module for ``steps`` CPU steps; returns its ``last.ckpt``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    crop_key = "anchor_len" if family == "frame" else "train_len"
    hparams = {  # the official training script's arguments (atst/train.py, atstframe/train.py)
        "arch": "small",
        "learning_rate": 5e-4 * 4 * 384 / 256,
        "warmup_steps": 1300,
        "max_steps": 39100,
        "ema": 0.99,
        "save_path": str(out_dir),
        "nproc": 4,
        "batch_size_per_gpu": 384,
        "data_path": "data/audioset",
        crop_key: 6.0 if family == "clip" else 10.0,
    }
    module = _official_style_module(teacher_weights, family, steps)(**hparams)
    mels = torch.randn(8, 64, 101)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(mels), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=[ModelCheckpoint(dirpath=out_dir, save_last=True, every_n_train_steps=1), LearningRateMonitor()],
        logger=CSVLogger(out_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, loader)
    return out_dir / "last.ckpt"


def dino_style_checkpoint(
    path: Path, teacher_backbone: Mapping[str, torch.Tensor], *, arch: str = "small", steps: int = 2
) -> Path:
    """The official DINO-style save dict, with a real AdamW state holding NumPy lr / weight decay."""
    torch.manual_seed(1)
    student = _Branch(ATSTEncoder.from_arch(arch), predictor=False)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in student.parameters() if p.ndim > 1]},
         {"params": [p for p in student.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    )
    lr, wd = official_schedule(2e-4, 1e-6, 100, 10), official_schedule(0.04, 0.4, 100)
    for step in range(steps):
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = lr[step]
            if i == 0:
                group["weight_decay"] = wd[step]
        student.encoder(torch.randn(2, 64, 101))[:, 0].pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    def dino_names(backbone: Mapping[str, torch.Tensor]) -> dict:
        head = {"module.head." + k: v for k, v in student.projector.state_dict().items()}  # 7 keys, as officially
        return {"module.backbone." + k: v for k, v in backbone.items()} | head

    save = {
        "student": dino_names(student.encoder.state_dict()),
        "teacher": dino_names(teacher_backbone),
        "optimizer": optimizer.state_dict(),
        "epoch": 100,
        "args": argparse.Namespace(
            arch="ast" if arch == "small" else "ast_base", anchor_len=[6.0, 6.0], lr=np.float64(2e-4), epochs=100,
            batch_size_per_gpu=256, output_dir=Path("runs") / "atst_base",
        ),
        "byol_loss": np.float32(0.31),
    }
    torch.save(save, path)
    return path


def with_numpy1_names(src: Path, dst: Path) -> Path:
    """Copy a torch zip checkpoint, renaming ``numpy._core.*`` globals to NumPy 1.x's ``numpy.core.*``.

    Protocol-2 GLOBAL opcodes are newline-terminated text, so the rename is a faithful rewrite of
    what NumPy 1.x writes (same opcodes, the old module name).
    """
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"cnumpy._core.", b"cnumpy.core.")
                assert b"cnumpy.core.multiarray\nscalar\n" in data, "the file holds no NumPy scalars to rename"
            zout.writestr(info, data)
    return dst


def pickle_globals(path: Path) -> set[str]:
    """The globals a torch zip checkpoint's pickle names (protocol 2: ``c<module>\\n<name>\\n``)."""
    import io
    import pickletools

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    out = set()
    for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
    return out
