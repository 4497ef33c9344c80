"""HEAR 2021 event tasks: per file a list of ``{"label", "start", "end"}`` events in milliseconds
(hear-eval-kit's layout), read into clips and checked annotations, and turned into targets on
the encoder's 40 ms token grid.

Annotations as real datasets have them are handled the way a user would expect:

* a label outside ``labelvocabulary.csv``, a missing key, a non-number or ``end < start``: a
  :class:`TaskError` naming the file and the event (the annotation is wrong, not the audio);
* an event reaching past either end of its clip: clipped to the clip, counted;
* an event of zero length, or one that lies wholly outside the clip: dropped, counted.

The counts come back in :attr:`EventSplit.fixes` and in the run's ``scores.json``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import Tensor

from pretrain.model.encoder import PATCH_FRAMES
from pretrain.model.extractor import TOKEN_CENTRE_OFFSET_MS, TOKEN_HOP_MS
from pretrain.model.frontend import SAMPLE_RATE, n_frames
from pretrain.model.hear_task import HearTask, TaskError

log = logging.getLogger(__name__)

Event = dict  # {"label": str, "start": float ms, "end": float ms}


@dataclass
class EventSplit:
    """The readable clips of one split of an event task, with their checked events."""

    name: str
    wavs: list[Tensor]
    events: list[list[Event]]
    files: list[str]
    skipped: list[str]
    fixes: Counter = field(default_factory=Counter)  # "clipped at the clip's end": 3, ...

    @property
    def durations_ms(self) -> list[float]:
        return [1000.0 * w.numel() / SAMPLE_RATE for w in self.wavs]


def n_tokens(n_samples: int) -> int:
    """Tokens the encoder yields for a clip of ``n_samples`` (4 mel frames each, the tail dropped)."""
    return n_frames(n_samples) // PATCH_FRAMES


def token_centres_ms(count: int, hop_ms: float = TOKEN_HOP_MS, offset_ms: float = TOKEN_CENTRE_OFFSET_MS) -> Tensor:
    """Centre of token ``k``: ``40 k + 15`` ms (frames ``4k .. 4k+3``, 10 ms apart); hear-eval-kit's
    timestamps of the package's timestamp embeddings. Another frame grid: ``hop_ms``, ``offset_ms``."""
    return torch.arange(count, dtype=torch.float64) * hop_ms + offset_ms


def token_targets(
    events: list[Event], count: int, labels: list[str], *, hop_ms: float = TOKEN_HOP_MS,
    offset_ms: float = TOKEN_CENTRE_OFFSET_MS,
) -> Tensor:
    """``(count, n_labels)`` 0/1 targets: token ``k`` is active for a label when the centre of the
    token lies in one of its events, ``start <= centre < end``."""
    index = {label: i for i, label in enumerate(labels)}
    centres = token_centres_ms(count, hop_ms, offset_ms)
    target = torch.zeros(count, len(labels))
    for event in events:
        active = (centres >= event["start"]) & (centres < event["end"])
        target[active, index[event["label"]]] = 1.0
    return target


def check_events(events: object, *, where: str, labels: set[str], duration_ms: float, fixes: Counter) -> list[Event]:
    """One file's annotations, checked and clipped to ``[0, duration_ms]`` (see the module's notes)."""
    if not isinstance(events, list):
        raise TaskError(f"{where}: events must be a list of {{label, start, end}}, got {type(events).__name__}")
    out = []
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not {"label", "start", "end"} <= event.keys():
            raise TaskError(f"{where}: event {i} must have label, start and end (ms), got {event!r}")
        label, start, end = str(event["label"]), event["start"], event["end"]
        if label not in labels:
            raise TaskError(f"{where}: event {i} has a label not in labelvocabulary.csv: {label!r}")
        if not all(isinstance(t, Real) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end)):
            raise TaskError(
                f"{where}: event {i} ({label}): start and end must be finite numbers (ms), got {start!r}, {end!r}"
            )
        if end < start:
            raise TaskError(f"{where}: event {i} ({label}) ends before it starts ({start} ms > {end} ms)")
        if end <= 0 or start >= duration_ms:
            fixes["outside the clip: dropped"] += 1
            continue
        if start < 0:
            fixes["starting before the clip: clipped"] += 1
            start = 0.0
        if end > duration_ms:
            fixes["past the clip's end: clipped"] += 1
            end = duration_ms
        if end == start:
            fixes["zero length: dropped"] += 1
            continue
        out.append({"label": label, "start": float(start), "end": float(end)})
    return sorted(out, key=lambda e: (e["start"], e["end"], e["label"]))


def read_event_split(task: HearTask, split: str) -> EventSplit:
    """Load one split of an event task: unreadable or too-short clips are skipped and counted (as
    for scene tasks), annotations checked (see the module's notes). Clips are not cropped: long ones
    run through the encoder chunk by chunk on the token grid."""
    if task.embedding_type != "event":
        raise TaskError(f"{task.name}: embedding_type {task.embedding_type!r}, not an event task")
    label_path, entries = task.split_entries(split)
    labels = set(task.labels)
    out = EventSplit(split, [], [], [], [])
    for name, events in entries.items():
        wav = task.load_clip(split, name)
        if wav is None:
            out.skipped.append(name)
            continue
        duration_ms = 1000.0 * wav.numel() / SAMPLE_RATE
        checked = check_events(
            events, where=f"{label_path.name}: {name}", labels=labels, duration_ms=duration_ms, fixes=out.fixes
        )
        out.wavs.append(wav)
        out.events.append(checked)
        out.files.append(name)
    if not out.wavs:
        raise TaskError(f"{task.name}: split {split!r} has no readable clips ({len(out.skipped)} skipped)")
    for fix, count in sorted(out.fixes.items()):
        log.warning("%s/%s: %d event(s) %s", task.name, split, count, fix)
    return out
