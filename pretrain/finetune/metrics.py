"""Scores in hear-eval-kit's names: ``top1_acc`` (multiclass) and ``mAP`` (multilabel)."""

from __future__ import annotations

import torch
from torch import Tensor


def top1_acc(scores: Tensor, targets: Tensor) -> float:
    """Share of clips whose highest score is their label."""
    return float((scores.argmax(1) == targets.argmax(1)).float().mean())


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Non-interpolated average precision of one class (scikit-learn's ``average_precision_score``):
    the mean, over the positives, of the precision at the threshold of each positive; tied scores
    form one threshold."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, hits = scores[order], positives[order].double()
    # the last index of each run of tied scores is where that threshold's counts are read
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    true_pos = hits.cumsum(0)[last_of_tie]
    predicted = (torch.arange(len(scores), dtype=torch.float64) + 1)[last_of_tie]
    new_hits = torch.diff(true_pos, prepend=torch.zeros(1, dtype=torch.float64))
    return float((new_hits * true_pos / predicted).sum() / hits.sum())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean per-class average precision; classes without positives are left out (official)."""
    present = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    return sum(average_precision(scores[:, c], targets[:, c] > 0) for c in present) / len(present)


def task_scores(scores: Tensor, targets: Tensor, *, multilabel: bool) -> dict[str, float]:
    if multilabel:
        return {"mAP": mean_average_precision(scores, targets)}
    return {"top1_acc": top1_acc(scores, targets)}
