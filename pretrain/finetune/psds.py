"""Polyphonic Sound Detection Score (Bilen et al., ICASSP 2020), DCASE's SED metric, with the
definitions of ``psds_eval`` 0.5.3, in NumPy.

Why not call ``psds_eval`` or ``sed_scores_eval``: on pandas 3 (which current stacks hold)
``psds_eval`` fails in ``step_curve`` (``fillna(method=)`` is gone) and ``sed_scores_eval`` fails
in its Cython kernels (read-only buffers from copy-on-write frames). The package's tests compare
this module with ``psds_eval`` itself, its one removed pandas call bridged.

Per operating point (one detection threshold for every class) and class ``c``:

* a detection passes the DTC when its summed overlap with same-class ground truth, over its own
  duration, is >= ``dtc``;
* a ground-truth event is a true positive when its summed overlap with DTC-passing detections of
  its class, over its own duration, is >= ``gtc``;
* a DTC-failing detection is a false positive; it cross-triggers class ``o`` when its summed
  overlap with class-``o`` ground truth, over its own duration, is >= ``cttc``;
* ``tpr = TP / n_gt``, ``fpr = FP * 3600 / total duration``, ``ctr = CT * 3600 / class-o gt
  duration``, ``efpr = fpr + alpha_ct * mean_o ctr``.

The PSD-ROC of each class is a step function (the best tpr at efpr <= x; an origin point added);
``eTPR = mean_c - alpha_st * std_c`` (population std), NaN -> 0, clipped at 0; PSDS is its area up
to ``max_efpr``, divided by ``max_efpr``.

Operating points are the DCASE baseline's 50 thresholds (``np.arange(1/100, 1, 1/50)``, as
ATST-SED), not every distinct score (the threshold-free variant of ``sed_scores_eval``). Detections
are runs of tokens above the threshold after the class's median filter; a run from token ``i`` to
``j`` spans ``[centre_i - 20 ms, centre_j + 20 ms]`` (each token stands for its 40 ms), so even
one token is an event of positive length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from pretrain.finetune.event_metrics import token_runs
from pretrain.model.event_task import Event, token_centres_ms
from pretrain.model.extractor import TOKEN_HOP_MS

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class PSDSSetting:
    dtc: float
    gtc: float
    cttc: float
    alpha_ct: float
    alpha_st: float
    max_efpr: float = 100.0


# DCASE 2021-2023 task 4 (and ATST-SED's reports)
PSDS1 = PSDSSetting(dtc=0.7, gtc=0.7, cttc=0.3, alpha_ct=0.0, alpha_st=1.0)
PSDS2 = PSDSSetting(dtc=0.1, gtc=0.1, cttc=0.3, alpha_ct=0.5, alpha_st=1.0)
DCASE_THRESHOLDS = np.arange(1 / 100, 1, 1 / 50)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` overlaps of ``(n, 2)`` onset/offset arrays (0 where they do not meet)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)


def _by_class(events: Sequence[Event], labels: Sequence[str]) -> list[np.ndarray]:
    """Per label, ``(n, 2)`` onsets and offsets in seconds."""
    return [
        np.array([(e["start"] / 1000.0, e["end"] / 1000.0) for e in events if e["label"] == label]).reshape(-1, 2)
        for label in labels
    ]


def operating_point(
    detections: Mapping[str, Sequence[Event]],
    ground_truth: Mapping[str, Sequence[Event]],
    durations_s: Mapping[str, float],
    labels: Sequence[str],
    setting: PSDSSetting,
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the true-positive ratio and the effective false-positive rate (per hour), over the
    files of ``ground_truth`` (events in ms, as HEAR writes them)."""
    n = len(labels)
    tp, fp, n_gt, gt_seconds = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    ct = np.zeros((n, n))
    for file, gt_events in ground_truth.items():
        gt = _by_class(gt_events, labels)
        det = _by_class(detections.get(file, []), labels)
        for c in range(n):
            n_gt[c] += len(gt[c])
            gt_seconds[c] += float((gt[c][:, 1] - gt[c][:, 0]).sum())
            d_len = det[c][:, 1] - det[c][:, 0]
            if not len(d_len):
                continue
            same = _overlap(det[c], gt[c])
            passes = same.sum(1) / d_len >= setting.dtc
            if len(gt[c]):
                coverage = same[passes].sum(0) / (gt[c][:, 1] - gt[c][:, 0])
                tp[c] += int((coverage >= setting.gtc).sum())
            fp[c] += int((~passes).sum())
            for o in range(n):
                if o != c and len(gt[o]):
                    cross = _overlap(det[c][~passes], gt[o]).sum(1) / d_len[~passes]
                    ct[c, o] += int((cross >= setting.cttc).sum())
    total = float(sum(durations_s[f] for f in ground_truth))
    tpr = np.divide(tp, n_gt, out=np.full(n, np.nan), where=n_gt > 0)
    fpr = fp * SECONDS_PER_HOUR / total
    ctr = np.full((n, n), np.nan)
    for c in range(n):
        for o in range(n):
            if o != c and gt_seconds[o] > 0:
                ctr[c, o] = ct[c, o] * SECONDS_PER_HOUR / gt_seconds[o]
    if not setting.alpha_ct:
        return tpr, fpr
    with np.errstate(invalid="ignore"):
        mean_ct = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in ctr])
    return tpr, fpr + setting.alpha_ct * mean_ct


def psds_of_points(points: Sequence[tuple[np.ndarray, np.ndarray]], setting: PSDSSetting) -> float:
    """PSDS from per-class ``(tpr, efpr)`` operating points (see the module's notes)."""
    tpr = np.stack([p[0] for p in points] + [np.zeros_like(points[0][0])], axis=1)  # (classes, points)
    efpr = np.stack([p[1] for p in points] + [np.zeros_like(points[0][1])], axis=1)
    grid = np.unique(efpr[np.isfinite(efpr)])
    curves = np.array(
        [[np.nanmax(np.where(e <= x, t, 0.0)) if np.isfinite(t).any() else np.nan for x in grid]
         for t, e in zip(tpr, efpr, strict=True)]
    )
    with np.errstate(invalid="ignore"):
        etpr = np.nan_to_num(np.nanmean(curves, 0) - setting.alpha_st * np.nanstd(curves, 0), nan=0.0).clip(0, None)
    if setting.max_efpr not in grid:
        cut = int(np.searchsorted(grid, setting.max_efpr))
        grid = np.insert(grid, cut, setting.max_efpr)
        etpr = np.insert(etpr, cut, etpr[cut - 1])
    keep = grid <= setting.max_efpr
    return float((np.diff(grid[keep]) * etpr[keep][:-1]).sum() / setting.max_efpr)


def detections_at(probs: np.ndarray, labels: Sequence[str], threshold: float) -> list[Event]:
    """One clip's detections at ``threshold`` from its (median-filtered) ``(n_tokens, n_labels)``
    posteriors; extents as in the module's notes."""
    centres = token_centres_ms(len(probs)).numpy()
    half = TOKEN_HOP_MS / 2
    return [
        {"label": label, "start": max(float(centres[first]) - half, 0.0), "end": float(centres[last]) + half}
        for c, label in enumerate(labels)
        for first, last in token_runs(probs[:, c], threshold)
    ]


def psds_scores(
    posteriors: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, Sequence[Event]],
    durations_s: Mapping[str, float],
    labels: Sequence[str],
    *,
    filter_widths: Sequence[int] | None = None,
    thresholds: Sequence[float] = DCASE_THRESHOLDS,
    settings: Mapping[str, PSDSSetting] | None = None,
) -> dict[str, float]:
    """``{"psds1": ..., "psds2": ...}`` of per-clip token posteriors over the operating points
    ``thresholds``, each class median-filtered by its width (tokens) first."""
    settings = settings or {"psds1": PSDS1, "psds2": PSDS2}
    widths = list(filter_widths) if filter_widths is not None else [0] * len(labels)
    filtered = {
        file: np.stack(
            [median_filter(p[:, c], size=w) if w > 1 else p[:, c] for c, w in enumerate(widths)], axis=1
        ).reshape(len(p), len(labels))
        for file, p in posteriors.items()
    }
    points: dict[str, list] = {name: [] for name in settings}
    for threshold in thresholds:
        detections = {f: detections_at(p, labels, float(threshold)) for f, p in filtered.items()}
        for name, setting in settings.items():
            points[name].append(operating_point(detections, ground_truth, durations_s, labels, setting))
    return {name: psds_of_points(points[name], settings[name]) for name in settings}
