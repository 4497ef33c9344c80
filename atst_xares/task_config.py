"""The xares ``TaskConfig`` of an exported task; the task modules ``atst_xares.task`` writes call it.

Clip tasks: one class index (multiclass, accuracy, also kNN) or a multi-hot vector (multilabel,
mAP) per clip. Frame tasks: a ``[n_labels, n_frames]`` 0/1 target per clip on the encoder's hop,
frame ``k`` active when its centre (``k * hop + offset``; the package's tokens are centred 15 ms
after their start, other encoders at half a hop) lies in ``[start, end)`` of an event; scored by
xares's segment F1 over 1 s segments. Events past a clip's end are cut at its end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from xares.task import TaskConfig

from atst_xares.task_spec import TaskSpec
from pretrain.model.event_task import token_targets


def _frame_offset_ms(encoder: Any, hop_ms: float) -> float:
    return float(getattr(encoder, "frame_offset_ms", hop_ms / 2))


class FrameTargets:
    """Events of one clip (its json) -> ``[n_labels, n_frames]`` float targets."""

    def __init__(self, labels: list[str], hop_ms: float, offset_ms: float) -> None:
        self.labels = labels
        self.hop_ms, self.offset_ms = hop_ms, offset_ms

    def __call__(self, sample: dict) -> torch.Tensor:
        """A frame is active when its centre lies in an event (the fine-tuning targets' rule)."""
        n = max(1, math.ceil(sample["duration_ms"] / self.hop_ms))
        return token_targets(sample["events"], n, self.labels, hop_ms=self.hop_ms, offset_ms=self.offset_ms).T


class ClipTargets:
    def __init__(self, labels: list[str], multilabel: bool) -> None:
        self.index = {label: i for i, label in enumerate(labels)}
        self.multilabel = multilabel

    def __call__(self, sample: dict) -> int | list[float]:
        if not self.multilabel:
            return self.index[sample["labels"][0]]
        # a list, not a tensor: xares's collate pads tensors into (values, lengths) pairs
        target = [0.0] * len(self.index)
        for label in sample["labels"]:
            target[self.index[label]] = 1.0
        return target


def exported_task_config(encoder: Any, folder: str | Path) -> TaskConfig:
    """The ``TaskConfig`` of the task exported to ``folder`` (its ``task.json``); data in
    ``./env/<name>/`` as xares expects (``atst_xares.run`` links it into a per-checkpoint folder)."""
    spec = TaskSpec.read(Path(folder))
    hop_ms = float(encoder.hop_size_in_ms) if encoder is not None else 40.0
    common: dict[str, Any] = dict(
        name=spec.name,
        formal_name=spec.name,
        encoder=encoder,
        output_dim=len(spec.labels),
        metric=spec.metric,
        eval_weight=spec.test_clips,
        epochs=spec.epochs,
        learning_rate=spec.learning_rate,
    )
    if spec.kind == "frame":
        common.update(
            task_type="frame",
            criterion="BCEWithLogitsLoss",
            label_processor=FrameTargets(spec.labels, hop_ms, _frame_offset_ms(encoder, hop_ms)),
            metric_args=dict(hop_size_in_ms=hop_ms, segment_length_in_s=1.0),
            do_knn=False,
        )
    else:
        common.update(
            task_type="clip",
            criterion="BCEWithLogitsLoss" if spec.multilabel else "CrossEntropyLoss",
            label_processor=ClipTargets(spec.labels, spec.multilabel),
            do_knn=not spec.multilabel,  # xares's kNN votes one class
        )
    # k-fold shard names: xares's own (wds-audio-fold-<fold>-*.tar), as task_spec.audio_tar_pattern
    return TaskConfig(k_fold_splits=spec.splits if spec.kfold else None, **common)
