"""A pretraining manifest from AudioSet's official segment CSVs and the files a downloader wrote.

The CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``, ...) list
``YTID, start_seconds, end_seconds, positive_labels`` after three ``#`` comment lines. Downloaders
name their files after the YouTube ID (always 11 characters) in one of a few ways, all matched
here: ``{YTID}.flac``, ``Y{YTID}.wav`` (audioset_tagging_cnn's downloader),
``{YTID}_{start}.wav`` or ``{YTID}_{start}_{end}.ogg``. Segments without a file are counted, not
fatal: AudioSet videos disappear from YouTube, and every copy of the set misses some.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.model.audio_io import AUDIO_SUFFIXES
from pretrain.training.data import DatasetError

YTID_LENGTH = 11


def _ytid(stem: str) -> str | None:
    for candidate in (stem, stem[1:] if stem.startswith("Y") else ""):
        if len(candidate) >= YTID_LENGTH and candidate[YTID_LENGTH : YTID_LENGTH + 1] in ("", "_"):
            return candidate[:YTID_LENGTH]
    return None


def read_segments(csv_path: str | os.PathLike) -> dict[str, str]:
    """YTID -> positive labels (comma-joined, as in the CSV) of an official AudioSet segments CSV."""
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"AudioSet CSV not found: {path}")
    segments = {}
    with open(path, newline="") as f:
        for row in csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True):
            if not row:
                continue
            if len(row) < 4 or len(row[0]) != YTID_LENGTH:
                raise DatasetError(f"{path}: not an AudioSet segments row: {row!r}")
            segments[row[0]] = ",".join(label.strip() for label in row[3:])
    return segments


@dataclass
class ManifestReport:
    segments: int = 0
    found: int = 0
    missing: list[str] = field(default_factory=list)  # YTIDs of the CSVs with no file
    unmatched: int = 0  # audio files that belong to no segment of the CSVs


def audioset_manifest(
    csv_paths: list[str | os.PathLike], audio_dir: str | os.PathLike, out: str | os.PathLike
) -> ManifestReport:
    """Write ``out`` (CSV: ``path`` relative to its folder, ``ytid``, ``labels``) for the segments of
    ``csv_paths`` found under ``audio_dir``."""
    segments: dict[str, str] = {}
    for csv_path in csv_paths:
        segments.update(read_segments(csv_path))
    audio_dir, out = Path(audio_dir), Path(out)
    if not audio_dir.is_dir():
        raise DatasetError(f"audio folder not found: {audio_dir}")
    report = ManifestReport(segments=len(segments))
    files: dict[str, Path] = {}
    for path in sorted(audio_dir.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        ytid = _ytid(path.stem)
        if ytid in segments:
            files.setdefault(ytid, path)
        else:
            report.unmatched += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "ytid", "labels"])
        for ytid, labels in segments.items():
            if ytid in files:
                writer.writerow([os.path.relpath(files[ytid], out.parent), ytid, labels])
                report.found += 1
            else:
                report.missing.append(ytid)
    if not report.found:
        raise DatasetError(f"none of the {len(segments)} segments has a file under {audio_dir}")
    return report
