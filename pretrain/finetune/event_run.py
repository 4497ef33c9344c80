"""One round of fine-tuning (or of the frozen baseline) on a HEAR event task.

Layout of a round's folder: ``stage1/`` and ``stage2/`` (fine-tuning) or the folder itself (the
baseline), each a Lightning run (``checkpoints/best.ckpt`` selected on validation, ``last.ckpt``,
``csv/``, ``tensorboard/``, ``curves.png``) with ``stage.json`` once it has finished, so a killed
run resumes inside the stage it was in and skips the stages it had done. Then, beside them:
``test.predictions.json`` (per test file its events, ``{label, start, end}`` in ms, as
hear-eval-kit writes them) and ``scores.json`` (the per-class decoding chosen on validation, the
validation and test scores: ``event_onset_200ms_fms``, ``segment_1s_er``, ``psds1``, ``psds2``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pretrain.finetune.event_metrics import (
    Decoding,
    choose_decodings,
    decoding_grid,
    event_scores,
    posteriors_to_events,
)
from pretrain.finetune.event_module import EventModule
from pretrain.finetune.loop import EpochBatches, make_trainer
from pretrain.finetune.module import steps_per_epoch
from pretrain.finetune.psds import psds_scores
from pretrain.finetune.recipe import FinetuneConfig
from pretrain.model.checkpoint import read_checkpoint
from pretrain.model.encoder import PATCH_FRAMES
from pretrain.model.event_task import EventSplit, n_tokens, read_event_split, token_targets
from pretrain.model.extractor import TOKEN_HOP_MS, ATSTFeatureExtractor
from pretrain.model.frontend import HOP_LENGTH, SAMPLE_RATE
from pretrain.model.hear_task import HearTask, TaskError
from pretrain.runs.plot import plot_run
from pretrain.runs.seeds import mix_seed

log = logging.getLogger(__name__)
SAMPLES_PER_TOKEN = PATCH_FRAMES * HOP_LENGTH  # 640
# settings that change where and how a run executes, not what it learns
RUNTIME_SETTINGS = ("devices", "num_nodes", "accelerator", "strategy", "resume", "log_every")
CURVES = ["train/loss", "train/lr", "valid/loss", "valid/score"]
FEATURE_BATCH = 16


class _Clips(Dataset):
    """Clips (waveforms, or precomputed ``(T, F)`` token features) with ``(T, C)`` token targets.
    ``crop_tokens``: waveforms longer than that are cropped on the token grid, at a start drawn from
    (seed, epoch of ``sampler``, clip), the targets with them (a crop of ``n`` tokens from token
    ``s`` is samples ``640 s .. 640 (s + n)``, whose tokens are tokens ``s .. s + n - 1``)."""

    def __init__(
        self, inputs: list[Tensor], targets: list[Tensor], *, crop_tokens: int = 0, seed: int = 0,
        sampler: EpochBatches | None = None,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.crop_tokens, self.seed, self.sampler = crop_tokens, seed, sampler

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor]:
        x, y = self.inputs[i], self.targets[i]
        n = self.crop_tokens
        if n and x.dim() == 1 and y.shape[0] > n:
            epoch = self.sampler.epoch if self.sampler is not None else 0
            start = int(np.random.default_rng(mix_seed(self.seed, "crop", epoch, i)).integers(0, y.shape[0] - n + 1))
            x, y = x[start * SAMPLES_PER_TOKEN : (start + n) * SAMPLES_PER_TOKEN], y[start : start + n]
        return i, x, y


def _pad(rows: list[Tensor]) -> Tensor:
    width = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, width - r.shape[0])) for r in rows])


def _collate(items: list[tuple[int, Tensor, Tensor]]) -> dict[str, Tensor]:
    index, inputs, targets = zip(*items, strict=True)
    batch = {"index": torch.tensor(index), "targets": _pad(list(targets))}
    if inputs[0].dim() == 2:  # token features
        batch["features"] = _pad(list(inputs))
        batch["n_tokens"] = torch.tensor([x.shape[0] for x in inputs])
    else:
        batch["wavs"] = _pad(list(inputs))
        batch["lengths"] = torch.tensor([w.numel() for w in inputs])
    return batch


def _targets(split: EventSplit, labels: list[str]) -> list[Tensor]:
    return [token_targets(ev, n_tokens(w.numel()), labels) for w, ev in zip(split.wavs, split.events, strict=True)]


def local_device(config: FinetuneConfig) -> torch.device:
    """This process's device outside Lightning's loops (features, predictions): its GPU where the
    run uses GPUs, else the CPU."""
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def is_rank_zero() -> bool:
    """Rank 0 of the run, also before the process group exists (Lightning's launcher sets the rank
    in the environment of the processes it starts)."""
    return rank_zero_only.rank == 0


def fingerprint(config: FinetuneConfig, checkpoint: str, stage: str) -> str:
    """What a finished stage was trained with: its settings (not where it ran) and the checkpoint."""
    learned = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_SETTINGS}
    text = json.dumps({"settings": learned, "checkpoint": str(checkpoint), "stage": stage}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def token_features(
    checkpoint: str, splits: list[EventSplit], *, all_blocks: bool, device: torch.device | str = "cpu"
) -> list[list[Tensor]]:
    """Each clip's ``(n_tokens, F)`` frozen features: the last block (stage 1) or every block, first
    block first (the package's timestamp embeddings: the baseline)."""
    extractor = ATSTFeatureExtractor.from_checkpoint(checkpoint).to(device)
    n_blocks = extractor.depth if all_blocks else 1
    out = []
    with torch.no_grad():
        for split in splits:
            rows: list[Tensor] = []
            for first in range(0, len(split.wavs), FEATURE_BATCH):
                layers, counts = extractor.layer_features(split.wavs[first : first + FEATURE_BATCH], n_blocks=n_blocks)
                rows.extend(x[:n].reshape(n, -1).cpu() for x, n in zip(layers, counts.tolist(), strict=True))
            out.append(rows)
    return out


def _merge(name: str, splits: list[EventSplit]) -> EventSplit:
    fixes: Counter = Counter()
    for s in splits:
        fixes.update(s.fixes)
    return EventSplit(
        name,
        [w for s in splits for w in s.wavs],
        [e for s in splits for e in s.events],
        [f for s in splits for f in s.files],
        [f for s in splits for f in s.skipped],
        fixes,
    )


def _fit_stage(
    stage: str,
    run_dir: Path,
    *,
    checkpoint: str,
    config: FinetuneConfig,
    labels: list[str],
    train: tuple[list[Tensor], list[Tensor]],
    valid: tuple[list[Tensor], list[Tensor]],
    valid_split: EventSplit,
    epochs: int,
    init_head: dict[str, Tensor] | None = None,
) -> tuple[EventModule, int]:
    """Train one stage (or resume it); returns the module with the weights selected on validation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, workers=True)
    trainer, best = make_trainer(config, run_dir, epochs, clip_grad=0.0)  # ATST-SED: gradient_clip 0
    world = trainer.world_size
    batch = config.sed_batch_size
    accumulate = config.accumulate_grad_batches
    module = EventModule(
        config.to_dict(),
        checkpoint=checkpoint,
        labels=labels,
        stage=stage,
        steps_per_epoch=steps_per_epoch(len(train[1]), batch_size=batch, world_size=world, accumulate=accumulate),
        world_size=world,
    )
    if init_head is not None:
        module.head.load_state_dict(init_head)
    module.valid_reference = dict(zip(valid_split.files, valid_split.events, strict=True))
    module.valid_files = valid_split.files
    done = run_dir / "stage.json"
    settings = fingerprint(config, checkpoint, stage)
    if config.resume == "auto" and done.is_file():
        record = json.loads(done.read_text())
        if record.get("settings") != settings:
            raise ValueError(
                f"{run_dir} holds a stage trained with other settings or another checkpoint: give another --out, "
                "or --resume never to train it again"
            )
        selected_path = str(run_dir / record["best"])
        log.info("%s: finished before, using %s", run_dir, selected_path)
    else:
        last = run_dir / "checkpoints" / "last.ckpt"
        resume = str(last) if config.resume == "auto" and last.is_file() else None
        if resume:
            log.info("resuming %s from %s", run_dir, resume)
        sampler = EpochBatches(len(train[1]), batch, seed=config.seed, world=world)
        crop = int(round(config.sed_train_seconds * 1000 / TOKEN_HOP_MS))
        trainer.fit(
            module,
            train_dataloaders=DataLoader(
                _Clips(*train, crop_tokens=crop, seed=config.seed, sampler=sampler),
                batch_sampler=sampler,
                collate_fn=_collate,
            ),
            val_dataloaders=DataLoader(_Clips(*valid), batch_size=batch, shuffle=False, collate_fn=_collate),
            ckpt_path=resume,
            weights_only=True,
        )
        selected_path = best.best_model_path
        if trainer.is_global_zero:
            plot_run(run_dir, curves=CURVES, title=f"ATST event task, {stage}")
            relative = str(Path(selected_path).resolve().relative_to(run_dir.resolve()))
            done.write_text(json.dumps({"best": relative, "settings": settings}))
    selected = read_checkpoint(selected_path)  # the package's safe reader: no code from the file runs
    module.load_state_dict(selected["state_dict"])
    return module, int(selected["epoch"])


def _posteriors(
    module: EventModule, inputs: list[Tensor], targets: list[Tensor], batch: int, device: torch.device
) -> list[np.ndarray]:
    module.to(device).eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for b in DataLoader(_Clips(inputs, targets), batch_size=batch, shuffle=False, collate_fn=_collate):
            out.extend(module.posteriors({k: v.to(device) for k, v in b.items()}))
    return out


def _scores(
    split: EventSplit, probs: list[np.ndarray], labels: list[str], decodings: list[Decoding]
) -> tuple[dict[str, float], dict[str, list]]:
    reference = dict(zip(split.files, split.events, strict=True))
    estimated = {f: posteriors_to_events(p, labels, decodings) for f, p in zip(split.files, probs, strict=True)}
    scores = event_scores(reference, estimated, labels)
    durations = {f: w.numel() / SAMPLE_RATE for f, w in zip(split.files, split.wavs, strict=True)}
    posteriors = dict(zip(split.files, probs, strict=True))
    scores |= psds_scores(posteriors, reference, durations, labels, filter_widths=[d.filter_width() for d in decodings])
    return scores, estimated


def run_event_round(
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
    """Train on ``train_splits`` (ATST-SED's two stages, or the frozen baseline), select on
    ``valid_split`` (checkpoints and per-class decoding), score ``test_split``; write the round's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = run_dir / "scores.json"
    settings = fingerprint(config, checkpoint, "baseline" if frozen else "finetune")
    if config.resume == "auto" and finished.is_file():
        result = json.loads(finished.read_text())
        if result.get("settings_fingerprint") == settings:
            log.info("%s: round finished before, its scores reused", run_dir)
            return result
    read = [read_event_split(task, s) for s in [*train_splits, valid_split, test_split]]
    train, valid, test = _merge("+".join(train_splits), read[:-2]), read[-2], read[-1]
    if len(train.wavs) < 2:
        raise TaskError(f"{task.name}: {len(train.wavs)} readable training clip(s); fine-tuning needs at least 2")
    labels, c = task.labels, config
    device = local_device(c)
    targets = [_targets(s, labels) for s in (train, valid, test)]
    batch = c.sed_batch_size
    common = {"checkpoint": checkpoint, "config": c, "labels": labels, "valid_split": valid}
    best_epochs: dict[str, int] = {}
    if frozen:
        feats = token_features(checkpoint, [train, valid, test], all_blocks=True, device=device)
        module, best_epochs["baseline"] = _fit_stage(
            "baseline", run_dir, **common, train=(feats[0], targets[0]), valid=(feats[1], targets[1]),
            epochs=max(c.sed_stage1_epochs + c.sed_stage2_epochs, 1),
        )
        inputs = feats
    else:
        module = None
        if c.sed_stage1_epochs:
            feats = token_features(checkpoint, [train, valid, test], all_blocks=False, device=device)
            module, best_epochs["stage1"] = _fit_stage(
                "head", run_dir / "stage1", **common, train=(feats[0], targets[0]), valid=(feats[1], targets[1]),
                epochs=c.sed_stage1_epochs,
            )
            inputs = feats
        if c.sed_stage2_epochs:
            head = None if module is None else module.head.state_dict()
            module, best_epochs["stage2"] = _fit_stage(
                "joint", run_dir / "stage2", **common, train=(train.wavs, targets[0]), valid=(valid.wavs, targets[1]),
                epochs=c.sed_stage2_epochs, init_head=head,
            )
            inputs = [train.wavs, valid.wavs, test.wavs]
    valid_probs = _posteriors(module, inputs[1], targets[1], batch, device)
    test_probs = _posteriors(module, inputs[2], targets[2], batch, device)
    grid = (task.evaluation_params or {}).get("event_postprocessing_grid")
    reference = dict(zip(valid.files, valid.events, strict=True))
    valid_posteriors = dict(zip(valid.files, valid_probs, strict=True))
    decodings = choose_decodings(valid_posteriors, reference, labels, decoding_grid(grid))
    valid_scores, _ = _scores(valid, valid_probs, labels, decodings)
    test_scores, predicted = _scores(test, test_probs, labels, decodings)
    result = {
        "round": round_name,
        "train": train.name,
        "valid": valid.name,
        "test": test.name,
        "head": c.sed_head,
        "best_epochs": best_epochs,
        "decoding": {label: dataclasses.asdict(d) for label, d in zip(labels, decodings, strict=True)},
        "valid_scores": valid_scores,
        "test_scores": test_scores,
        "skipped_files": {s.name: s.skipped for s in read if s.skipped},
        "annotation_fixes": {s.name: dict(s.fixes) for s in read if s.fixes},
        "settings_fingerprint": settings,
    }
    if is_rank_zero():
        (run_dir / "test.predictions.json").write_text(json.dumps(predicted, indent=1))
        (run_dir / "scores.json").write_text(json.dumps(result, indent=1))
    return result
