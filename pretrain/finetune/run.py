"""Running fine-tuning (and the frozen baseline) on every round of a HEAR task (scene tasks here,
event tasks in ``pretrain.finetune.event_run``).

Layout of ``OUT``: ``{finetune,frozen}/<round>/`` per round (``trainvaltest`` or the test fold's
name) with ``checkpoints/`` (``best.ckpt`` selected on the validation split, ``last.ckpt``),
``tensorboard/``, ``csv/``, ``curves.png``, ``test.predictions.json`` and ``scores.json``;
``OUT/scores.json`` gathers every round, the k-fold mean, and both modes side by side.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.finetune.event_run import run_event_round
from pretrain.finetune.loop import EpochBatches, make_trainer
from pretrain.finetune.metrics import task_scores
from pretrain.finetune.module import FinetuneModule, steps_per_epoch
from pretrain.finetune.recipe import FinetuneConfig
from pretrain.model.checkpoint import inspect_checkpoint, read_checkpoint
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.hear_task import HearTask, Split, TaskError
from pretrain.model.registry import resolve_checkpoint
from pretrain.runs.plot import plot_run

log = logging.getLogger(__name__)
CURVES = ["train/loss", "train/lr", "valid/score"]
FEATURE_BATCH = 16


class _Items(Dataset):
    def __init__(self, inputs: list[Tensor] | Tensor, targets: Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.inputs[i], self.targets[i]


def _collate(items: list[tuple[Tensor, Tensor]], *, features: bool) -> dict[str, Tensor]:
    inputs, targets = zip(*items, strict=True)
    if features:
        return {"features": torch.stack(inputs), "targets": torch.stack(targets)}
    lengths = torch.tensor([w.numel() for w in inputs])
    wavs = torch.zeros(len(inputs), int(lengths.max()))
    for i, w in enumerate(inputs):
        wavs[i, : w.numel()] = w
    return {"wavs": wavs, "lengths": lengths, "targets": torch.stack(targets)}


def _frozen_features(checkpoint: str, splits: list[Split]) -> list[Tensor]:
    """The official linear evaluation's features (all blocks) of each split, computed once."""
    extractor = ATSTFeatureExtractor.from_checkpoint(checkpoint)
    depth = extractor.encoder.depth
    out = []
    with torch.no_grad():
        for split in splits:
            rows = [
                extractor.scene_embeddings(split.wavs[i : i + FEATURE_BATCH], n_blocks=depth)
                for i in range(0, len(split.wavs), FEATURE_BATCH)
            ]
            out.append(torch.cat(rows))
    return out


def _predict(module: FinetuneModule, loader: DataLoader) -> Tensor:
    module.eval()
    with torch.no_grad():
        return torch.cat([module.activate(module(batch).float()) for batch in loader])


def run_round(
    task: HearTask,
    round_name: str,
    train_splits: list[str],
    valid_split: str,
    test_split: str,
    *,
    checkpoint: str,
    config: FinetuneConfig,
    run_dir: Path,
    frozen: bool,
) -> dict[str, Any]:
    """Train on ``train_splits``, select on ``valid_split``, score ``test_split``; write the round's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, workers=True)
    read = [task.read_split(s, max_seconds=config.max_seconds) for s in [*train_splits, valid_split, test_split]]
    train = Split(
        "+".join(train_splits),
        [w for s in read[:-2] for w in s.wavs],
        torch.cat([s.targets for s in read[:-2]]),
        [f for s in read[:-2] for f in s.files],
        [f for s in read[:-2] for f in s.skipped],
    )
    valid, test = read[-2], read[-1]
    if len(train.targets) < 2:  # the head's BatchNorm needs two clips in a training batch
        raise TaskError(f"{task.name}: {len(train.targets)} readable training clip(s); fine-tuning needs at least 2")
    inputs = _frozen_features(checkpoint, [train, valid, test]) if frozen else [train.wavs, valid.wavs, test.wavs]
    epochs, batch = (config.frozen_epochs, config.frozen_batch_size) if frozen else (config.epochs, config.batch_size)
    trainer, best = make_trainer(config, run_dir, epochs)
    world = trainer.world_size

    def loader(i: int, split: Split, sampler: Sampler | None = None) -> DataLoader:
        data = _Items(inputs[i], split.targets)
        collate = functools.partial(_collate, features=frozen)
        if sampler is not None:
            return DataLoader(data, batch_sampler=sampler, collate_fn=collate)
        return DataLoader(data, batch_size=batch, shuffle=False, collate_fn=collate)

    train_sampler = EpochBatches(len(train.targets), batch, seed=config.seed, world=world)
    module = FinetuneModule(
        config.to_dict(),
        checkpoint=str(checkpoint),
        labels=task.labels,
        multilabel=task.multilabel,
        frozen=frozen,
        steps_per_epoch=steps_per_epoch(
            len(train.targets), batch_size=batch, world_size=world, accumulate=config.accumulate_grad_batches
        ),
        world_size=world,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if config.resume == "auto" and last.is_file() else None
    if resume:
        log.info("resuming %s from %s", round_name, resume)
    trainer.fit(
        module,
        train_dataloaders=loader(0, train, train_sampler),
        val_dataloaders=loader(1, valid),
        ckpt_path=resume,
        weights_only=True,
    )
    selected = read_checkpoint(best.best_model_path)  # the package's safe reader: no code from the file runs
    module.load_state_dict(selected["state_dict"])
    result = {
        "round": round_name,
        "train": train.name,
        "valid": valid.name,
        "test": test.name,
        "best_epoch": int(selected["epoch"]),
        "valid_scores": task_scores(_predict(module, loader(1, valid)), valid.targets, multilabel=task.multilabel),
        "skipped_files": {s.name: s.skipped for s in read if s.skipped},
    }
    predictions = _predict(module, loader(2, test))
    result["test_scores"] = task_scores(predictions, test.targets, multilabel=task.multilabel)
    if trainer.is_global_zero:
        (run_dir / "test.predictions.json").write_text(
            json.dumps({"labels": task.labels, "predictions": dict(zip(test.files, predictions.tolist(), strict=True))})
        )
        (run_dir / "scores.json").write_text(json.dumps(result, indent=1))
        plot_run(run_dir, curves=CURVES, title=f"ATST {'frozen' if frozen else 'fine-tuning'}")
    return result


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else float("nan")


def finetune(checkpoint: str | Path, task_dir: str | Path, out: str | Path, config: FinetuneConfig) -> dict[str, Any]:
    """Every round of the task in the chosen modes; returns (and writes to ``OUT/scores.json``) the
    scores: per round, the k-fold mean, fine-tuned and frozen side by side."""
    task = HearTask.open(task_dir, events=True)
    run = run_event_round if task.embedding_type == "event" else run_round
    checkpoint = resolve_checkpoint(checkpoint)  # a registered name: fetched once, here, before any worker starts
    spec = inspect_checkpoint(checkpoint).spec  # missing, a directory, unusable: fails here, before any training
    modes = ["frozen"] if config.freeze else (["finetune", "frozen"] if config.baseline else ["finetune"])
    out = Path(out)
    report: dict[str, Any] = {
        "task": task.name,
        "checkpoint": str(checkpoint),
        "family": spec.family,
        "arch": spec.arch,
        "split_mode": task.split_mode,
        "settings": config.to_dict(),
    }
    for mode in modes:
        rounds = [
            run(
                task,
                name,
                train,
                valid,
                test,
                checkpoint=str(checkpoint),
                config=config,
                run_dir=out / mode / name,
                frozen=mode == "frozen",
            )
            for name, train, valid, test in task.rounds()
        ]
        metric = next(iter(rounds[0]["test_scores"]))
        values = np.array([r["test_scores"][metric] for r in rounds], dtype=float)
        report[mode] = {
            "metric": metric,
            # an event round without any detection has no onset F (NaN, as sed_eval): left out of the
            # mean and counted, rather than making the task's mean NaN
            "test_mean": _mean(values),
            "test_std": float(np.nanstd(values)) if np.isfinite(values).any() else float("nan"),
            "test_means": {k: _mean([r["test_scores"][k] for r in rounds]) for k in rounds[0]["test_scores"]},
            "rounds_without_score": int((~np.isfinite(values)).sum()),
            "rounds": rounds,
        }
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.json").write_text(json.dumps(report, indent=1))
    return report
