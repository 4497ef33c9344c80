"""Sound event detection scores as hear-eval-kit reports them, with sed_eval's definitions
(``heareval/score.py`` passes each file's events to ``sed_eval.sound_event``):

* ``event_onset_200ms_fms``: event-based F-measure, onsets only, 200 ms collar. A reference and an
  estimated event of the same label match when ``|onset difference| <= 0.2`` s; the matching is a
  maximum one (sed_eval's ``event_matching_type="optimal"``); counts are summed over files and
  classes (micro average). No estimated event at all gives precision NaN, hence F NaN, as sed_eval.
* ``segment_1s_er``: segment-based error rate over 1 s segments. Per file the segments run to the
  latest offset of either list; an event marks the segments ``floor(onset) .. ceil(offset)``; per
  segment ``S = min(N_ref, N_sys) - N_tp``, ``D = max(0, N_ref - N_sys)``, ``I = max(0, N_sys -
  N_ref)``; ``ER = (S + D + I) / N_ref`` over all segments.

Frame posteriors become events as hear-eval-kit's ``create_events_from_prediction`` makes them:
median filter (scipy, ``round(ms / 40)`` tokens), ``p > threshold``, runs of active tokens,
``start`` / ``end`` the timestamps (token centres) of the run's first and last token, runs shorter
than ``min_duration`` ms dropped. The package's one generalisation: the threshold, the filter and
the minimum duration are chosen per class on the validation split (DCASE practice; ATST-SED's
per-class median windows), where hear-eval-kit uses 0.5 and one grid point for all classes.

Written here rather than called from sed_eval so the per-class search on validation stays fast;
``tests/test_finetune_events.py`` checks both scores against sed_eval and hear-eval-kit's own
score classes on the same predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from pretrain.model.event_task import Event, token_centres_ms
from pretrain.model.extractor import TOKEN_HOP_MS

ONSET_COLLAR_S = 0.2
SEGMENT_S = 1.0
EPS = float(np.spacing(1))  # sed_eval's eps in its rates


@dataclass(frozen=True)
class Decoding:
    """How one class's posteriors become events."""

    threshold: float = 0.5
    median_filter_ms: float = 0.0
    min_duration_ms: float = 0.0

    def filter_width(self) -> int:
        return int(round(self.median_filter_ms / TOKEN_HOP_MS))


def token_runs(track: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """``(first, last)`` token of each run of consecutive tokens whose value exceeds ``threshold``."""
    active = np.flatnonzero(track > threshold)
    if not len(active):
        return []
    breaks = np.flatnonzero(np.diff(active) > 1)
    firsts, lasts = np.r_[0, breaks + 1], np.r_[breaks, len(active) - 1]
    return [(int(active[a]), int(active[b])) for a, b in zip(firsts, lasts, strict=True)]


def posteriors_to_events(probs: np.ndarray, labels: Sequence[str], decodings: Sequence[Decoding]) -> list[Event]:
    """Events of one clip from its ``(n_tokens, n_labels)`` posteriors, one :class:`Decoding` per label."""
    times = token_centres_ms(len(probs)).numpy()
    events = []
    for c, (label, decoding) in enumerate(zip(labels, decodings, strict=True)):
        track = probs[:, c]
        width = decoding.filter_width()
        if width:
            track = median_filter(track, size=width)
        for first, last in token_runs(track, decoding.threshold):
            start, end = float(times[first]), float(times[last])
            if end - start >= decoding.min_duration_ms:
                events.append({"label": label, "start": start, "end": end})
    return sorted(events, key=lambda e: (e["start"], e["label"]))


def _onsets(events: Sequence[Event], label: str) -> list[float]:
    return sorted(e["start"] / 1000.0 for e in events if e["label"] == label)


def _matched_onsets(reference: list[float], estimated: list[float], collar: float) -> int:
    """Size of a maximum matching between sorted onsets, pairs within ``collar``. Every reference
    accepts the estimates in a window of the same width around it, so taking, reference by
    reference in time order, the earliest unmatched estimate in its window is maximal."""
    used = [False] * len(estimated)
    matched = 0
    for r in reference:
        for j, e in enumerate(estimated):
            if not used[j] and math.fabs(r - e) <= collar:
                used[j] = True
                matched += 1
                break
    return matched


def _rate(count: float, total: float) -> float:
    return float(count / total) if total else float("nan")


def _f(precision: float, recall: float) -> float:
    if precision == 0 and recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def onset_scores(
    reference: Mapping[str, Sequence[Event]],
    estimated: Mapping[str, Sequence[Event]],
    labels: Sequence[str],
    *,
    collar: float = ONSET_COLLAR_S,
) -> dict[str, float | dict[str, float]]:
    """Onset-only event-based F-measure, precision and recall (overall), and the F-measure per class,
    over the files of ``reference``."""
    counts = {label: [0, 0, 0] for label in labels}  # matched, n_ref, n_sys
    for file, ref_events in reference.items():
        est_events = estimated.get(file, [])
        for label in labels:
            ref, est = _onsets(ref_events, label), _onsets(est_events, label)
            row = counts[label]
            row[0] += _matched_onsets(ref, est, collar)
            row[1] += len(ref)
            row[2] += len(est)
    tp, n_ref, n_sys = (sum(row[i] for row in counts.values()) for i in range(3))
    precision, recall = _rate(tp, n_sys), _rate(tp, n_ref)
    per_class = {label: _f(_rate(m, s), _rate(m, r)) for label, (m, r, s) in counts.items()}
    return {"f_measure": _f(precision, recall), "precision": precision, "recall": recall, "class_f_measure": per_class}


def _segment_roll(events: Sequence[Event], labels: Sequence[str], n_segments: int, resolution: float) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    length = max([int(math.ceil(e["end"] / 1000.0 / resolution)) for e in events], default=0)
    roll = np.zeros((max(length, n_segments), len(labels)), dtype=np.int64)
    for e in events:
        onset = int(math.floor(e["start"] / 1000.0 / resolution))
        offset = int(math.ceil(e["end"] / 1000.0 / resolution))
        roll[onset:offset, index[e["label"]]] = 1
    return roll[:n_segments]


def segment_error_rate(
    reference: Mapping[str, Sequence[Event]],
    estimated: Mapping[str, Sequence[Event]],
    labels: Sequence[str],
    *,
    resolution: float = SEGMENT_S,
) -> float:
    """Segment-based error rate over the files of ``reference`` (see the module's notes)."""
    subs = dels = ins = n_ref = 0
    for file, ref_events in reference.items():
        est_events = estimated.get(file, [])
        longest = max([e["end"] / 1000.0 for e in [*ref_events, *est_events]], default=0.0)
        n_segments = int(math.ceil(longest / resolution))
        ref = _segment_roll(ref_events, labels, n_segments, resolution)
        est = _segment_roll(est_events, labels, n_segments, resolution)
        per_ref, per_sys = ref.sum(1), est.sum(1)
        tp = (ref & est).sum(1)
        subs += int((np.minimum(per_ref, per_sys) - tp).sum())
        dels += int(np.maximum(0, per_ref - per_sys).sum())
        ins += int(np.maximum(0, per_sys - per_ref).sum())
        n_ref += int(per_ref.sum())
    return float(subs / (n_ref + EPS)) + float(dels / (n_ref + EPS)) + float(ins / (n_ref + EPS))


def event_scores(
    reference: Mapping[str, Sequence[Event]], estimated: Mapping[str, Sequence[Event]], labels: Sequence[str]
) -> dict[str, float]:
    """hear-eval-kit's two event scores under their names, plus onset precision and recall."""
    onset = onset_scores(reference, estimated, labels)
    return {
        "event_onset_200ms_fms": onset["f_measure"],
        "event_onset_200ms_precision": onset["precision"],
        "event_onset_200ms_recall": onset["recall"],
        "segment_1s_er": segment_error_rate(reference, estimated, labels),
    }


# hear-eval-kit's grid when a task's metadata sets none (``task_predictions.py``)
HEAREVAL_POSTPROCESSING_GRID = {"median_filter_ms": [250.0], "min_duration": [125.0, 250.0]}
SELECTION_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))


def decoding_grid(grid: Mapping[str, Sequence[float]] | None) -> list[Decoding]:
    """Every (threshold, median filter, minimum duration) to try: the thresholds 0.1 .. 0.9 and the
    task's ``event_postprocessing_grid`` (hear-eval-kit's default where it has none)."""
    grid = grid or HEAREVAL_POSTPROCESSING_GRID
    return [
        Decoding(threshold, float(median), float(minimum))
        for threshold in SELECTION_THRESHOLDS
        for median in grid.get("median_filter_ms", [0.0])
        for minimum in grid.get("min_duration", [0.0])
    ]


def choose_decodings(
    posteriors: Mapping[str, np.ndarray],
    reference: Mapping[str, Sequence[Event]],
    labels: Sequence[str],
    candidates: Sequence[Decoding],
) -> list[Decoding]:
    """Per class, the candidate with the best onset F-measure of that class on ``reference`` (the
    validation split; a class never detected scores 0). Of equals, the one whose threshold is nearest
    0.5 (hear-eval-kit's), so a class absent from validation keeps 0.5 rather than the lowest."""
    ordered = sorted(candidates, key=lambda d: abs(d.threshold - 0.5))  # stable: grid order among equals
    chosen = []
    for c, label in enumerate(labels):
        best, best_f = ordered[0], -1.0
        for decoding in ordered:
            estimated = {f: posteriors_to_events(p[:, [c]], [label], [decoding]) for f, p in posteriors.items()}
            f_measure = onset_scores(reference, estimated, [label])["class_f_measure"][label]
            f_measure = f_measure if math.isfinite(f_measure) else 0.0
            if f_measure > best_f:
                best, best_f = decoding, f_measure
        chosen.append(best)
    return chosen
