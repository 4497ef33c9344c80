"""HEAR 2021 task folders (the layout hear-eval-kit reads): read for fine-tuning and for the online
probe of pretraining, written for generated tasks (``write_task``).

A task folder holds ``task_metadata.json``, ``labelvocabulary.csv`` (``idx,label``),
``<split>.json`` (file name -> list of labels) and the audio under ``16000/<split>/``. Split
modes: ``trainvaltest`` (splits ``train``, ``valid``, ``test``) and the k-fold modes
(``new_split_kfold``, ``presplit_kfold``: splits ``fold00`` .. ``foldNN``). For test fold ``k``
the package trains on the other folds and selects the checkpoint on fold ``k + 1`` (mod ``n``),
held out of training; it never selects on the test split.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import Tensor

from pretrain.model.audio_io import AudioFileError, load_audio
from pretrain.model.extractor import center_crop
from pretrain.model.frontend import MIN_SAMPLES, SAMPLE_RATE

log = logging.getLogger(__name__)

KFOLD_MODES = ("new_split_kfold", "presplit_kfold")
PREDICTION_TYPES = ("multiclass", "multilabel")


class TaskError(ValueError):
    """A task folder that cannot be used as given (missing parts, labels outside the vocabulary)."""


@dataclass
class Split:
    """The readable clips of one split: waveforms (16 kHz), multi-hot targets, file names."""

    name: str
    wavs: list[Tensor]
    targets: Tensor  # (N, n_labels) float 0/1
    files: list[str]
    skipped: list[str]


@dataclass
class HearTask:
    root: Path
    name: str
    prediction_type: str
    split_mode: str
    labels: list[str]
    sample_duration: float | None
    folds: list[str]  # k-fold split names, empty for trainvaltest

    embedding_type: str = "scene"
    evaluation_params: dict | None = None  # event tasks: hear-eval-kit's event_postprocessing_grid

    @classmethod
    def open(cls, root: str | Path, *, events: bool = False) -> HearTask:
        """Read a task folder's metadata and vocabulary; ``events``: accept event tasks too
        (fine-tuning, the X-ARES export); the online probe reads scene tasks only."""
        root = Path(root)
        meta_path = root / "task_metadata.json"
        if not meta_path.is_file():
            raise TaskError(f"not a HEAR task folder: {meta_path} not found")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise TaskError(f"{meta_path}: not JSON ({err})") from None
        embedding_type = meta.get("embedding_type")
        if not (embedding_type == "scene" or (events and embedding_type == "event")):
            raise TaskError(
                f"{root.name}: embedding_type {meta.get('embedding_type')!r}; "
                + ("expected 'scene' or 'event'" if events else "a scene task is needed here")
            )
        if meta.get("prediction_type") not in PREDICTION_TYPES:
            raise TaskError(f"{root.name}: prediction_type must be one of {PREDICTION_TYPES}")
        vocab_path = root / "labelvocabulary.csv"
        if not vocab_path.is_file():
            raise TaskError(f"{root.name}: {vocab_path.name} not found")
        with open(vocab_path, newline="") as f:
            labels = [row["label"] for row in csv.DictReader(f)]
        if not labels:
            raise TaskError(f"{vocab_path}: no labels")
        mode = meta.get("split_mode", "trainvaltest")
        if mode in KFOLD_MODES:
            folds = sorted(p.stem for p in root.glob("fold*.json"))
            expected = int(meta.get("nfolds", len(folds)))
            if len(folds) != expected or len(folds) < 3:
                raise TaskError(f"{root.name}: {mode} needs {expected} (at least 3) fold*.json files, found {folds}")
        elif mode == "trainvaltest":
            folds = []
            for split in ("train", "valid", "test"):
                if not (root / f"{split}.json").is_file():
                    raise TaskError(f"{root.name}: split {split!r} missing ({split}.json not found)")
        else:
            raise TaskError(f"{root.name}: unknown split_mode {mode!r}")
        duration = meta.get("sample_duration")
        return cls(
            root,
            meta.get("task_name", root.name),
            meta["prediction_type"],
            mode,
            labels,
            float(duration) if duration else None,
            folds,
            embedding_type,
            meta.get("evaluation_params") if isinstance(meta.get("evaluation_params"), dict) else None,
        )

    @property
    def multilabel(self) -> bool:
        return self.prediction_type == "multilabel"

    def rounds(self) -> list[tuple[str, list[str], str, str]]:
        """``(round name, train splits, validation split, test split)`` of the task's protocol."""
        if not self.folds:
            return [("trainvaltest", ["train"], "valid", "test")]
        n = len(self.folds)
        out = []
        for k, test in enumerate(self.folds):
            valid = self.folds[(k + 1) % n]
            out.append((test, [f for f in self.folds if f not in (test, valid)], valid, test))
        return out

    def split_entries(self, split: str) -> tuple[Path, dict]:
        """``<split>.json`` and what it maps each file name to (labels, or events); a missing file,
        one that is not JSON or not an object: a clear error."""
        label_path = self.root / f"{split}.json"
        if not label_path.is_file():
            raise TaskError(f"{self.root.name}: split {split!r} missing ({label_path.name} not found)")
        try:
            entries = json.loads(label_path.read_text())
        except json.JSONDecodeError as err:
            raise TaskError(f"{label_path}: not JSON ({err})") from None
        if not isinstance(entries, dict):
            raise TaskError(f"{label_path}: expected an object mapping file names to their labels or events")
        return label_path, entries

    def load_clip(self, split: str, name: str) -> Tensor | None:
        """One clip of a split at 16 kHz, or ``None`` (with a warning naming it) when it cannot be
        read or is too short for the front end: the caller skips and counts it."""
        path = self.root / str(SAMPLE_RATE) / split / name
        try:
            wav = load_audio(path)
        except AudioFileError as err:
            log.warning("skipping %s", err)
            return None
        if wav.numel() < MIN_SAMPLES:
            log.warning("skipping %s: %d samples, fewer than %d", path, wav.numel(), MIN_SAMPLES)
            return None
        return wav

    def read_split(self, split: str, *, max_seconds: float | None = None) -> Split:
        """Load one split of a scene task; unreadable or too-short clips are skipped, counted and named
        in a warning; labels outside the vocabulary are an error. ``max_seconds``: centre crop
        (official 12 s). Event tasks: :func:`pretrain.model.event_task.read_event_split`."""
        if self.embedding_type != "scene":
            raise TaskError(f"{self.name}: an event task; read it with read_event_split")
        label_path, entries = self.split_entries(split)
        index = {label: i for i, label in enumerate(self.labels)}
        wavs, rows, files, skipped = [], [], [], []
        for name, labels in entries.items():
            unknown = [lab for lab in labels if str(lab) not in index]
            if unknown:
                raise TaskError(f"{label_path}: {name} has labels not in labelvocabulary.csv: {unknown}")
            if not self.multilabel and len(labels) != 1:
                raise TaskError(f"{label_path}: {name} has {len(labels)} labels in a multiclass task")
            wav = self.load_clip(split, name)
            if wav is None:
                skipped.append(name)
                continue
            if max_seconds is not None:
                wav = center_crop(wav, int(max_seconds * SAMPLE_RATE))
            row = torch.zeros(len(self.labels))
            row[[index[str(lab)] for lab in labels]] = 1.0
            wavs.append(wav)
            rows.append(row)
            files.append(name)
        if not wavs:
            raise TaskError(f"{self.root.name}: split {split!r} has no readable clips ({len(skipped)} skipped)")
        return Split(split, wavs, torch.stack(rows), files, skipped)


def scene_metadata(name: str, prediction_type: str, splits: list[str], seconds: float, **extra) -> dict:
    """``task_metadata.json`` of a trainvaltest scene task (``top1_acc`` or ``mAP`` evaluation)."""
    metric = "mAP" if prediction_type == "multilabel" else "top1_acc"
    return {
        "task_name": name,
        "version": "generated-1",
        "embedding_type": "scene",
        "prediction_type": prediction_type,
        "split_mode": "trainvaltest",
        "splits": splits,
        "sample_duration": seconds,
        "evaluation": [metric],
        **extra,
    }


def event_metadata(name: str, splits: list[str], seconds: float, grid: dict | None = None) -> dict:
    """``task_metadata.json`` of a trainvaltest event task (hear-eval-kit's event scores)."""
    return {
        "task_name": name,
        "version": "synthetic-1",
        "embedding_type": "event",
        "prediction_type": "multilabel",
        "split_mode": "trainvaltest",
        "splits": splits,
        "sample_duration": seconds,
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
        "evaluation_params": {
            "event_postprocessing_grid": grid or {"median_filter_ms": [160], "min_duration": [80, 160]},
        },
    }


def write_task(root: Path, metadata: dict, labels: list[str], splits: dict[str, dict]) -> Path:
    """Write a task folder: ``splits`` maps split -> file name -> (16 kHz audio, labels)."""
    if root.exists():
        raise TaskError(f"{root} exists already: remove it or write the task elsewhere")
    root.mkdir(parents=True)
    (root / "task_metadata.json").write_text(json.dumps(metadata, indent=2))
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(labels)))
    for split, files in splits.items():
        (root / f"{split}.json").write_text(json.dumps({name: target for name, (_, target) in files.items()}))
        for name, (audio, _) in files.items():
            path = root / str(SAMPLE_RATE) / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(path), np.asarray(audio, dtype=np.float32), SAMPLE_RATE)
    return root
