"""Export a HEAR 2021 task folder (scene or event) as an X-ARES task that runs offline.

    python -m atst_xares.task HEAR_TASK_DIR OUT [--epochs N]

writes ``OUT/<name>_task.py`` (the task module for ``xares.run``), ``OUT/env/<name>/`` (WebDataset
shards written by xares's own ``write_audio_tar``: ``<key>.wav`` + ``<key>.json`` per clip, and the
``.audio_tar_ready`` marker) and ``OUT/env/<name>/task.json`` (the task's labels and metric).
Unreadable or too-short clips are skipped and counted; labels outside the vocabulary and events
that end before they start are errors naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from atst_xares.task_spec import XARES_EPOCHS, XARES_LR, TaskSpec, audio_tar_pattern
from pretrain.model.audio_io import AudioFileError, load_audio
from pretrain.model.frontend import MIN_SAMPLES, SAMPLE_RATE
from pretrain.model.hear_task import HearTask, TaskError

log = logging.getLogger(__name__)
SHARDS_PER_SPLIT = 4  # xares's own tasks use 4 (TaskConfig.num_shards_rawaudio)

MODULE_TEMPLATE = '''"""X-ARES task {name!r}, exported by atst_xares.task from {source}."""

from pathlib import Path

import atst_xares.task_config as _exported


def {function}(encoder=None):
    return _exported.exported_task_config(encoder, Path(__file__).parent / "env" / {name!r})
'''


def _module_name(name: str) -> str:
    ident = re.sub(r"\W", "_", name).strip("_").lower() or "task"
    return ident if not ident[0].isdigit() else f"task_{ident}"


def _clip_label(task: HearTask, split: str, name: str, value, index: dict[str, int], duration_ms: float) -> dict:
    where = f"{task.root / (split + '.json')}: {name}"
    if task.embedding_type == "scene":
        labels = [str(label) for label in value]
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise TaskError(f"{where} has labels not in labelvocabulary.csv: {unknown}")
        if not task.multilabel and len(labels) != 1:
            raise TaskError(f"{where} has {len(labels)} labels in a multiclass task")
        return {"labels": labels, "duration_ms": duration_ms}
    events = []
    for event in value:
        label, start, end = str(event["label"]), float(event["start"]), float(event["end"])
        if label not in index:
            raise TaskError(f"{where}: event label {label!r} is not in labelvocabulary.csv")
        if not start < end:
            raise TaskError(f"{where}: an event of {label!r} ends ({end} ms) before it starts ({start} ms)")
        events.append({"label": label, "start": max(start, 0.0), "end": min(end, duration_ms)})
    return {"events": [e for e in events if e["start"] < e["end"]], "duration_ms": duration_ms}


def export_task(hear_dir: str | Path, out: str | Path, *, epochs: int = XARES_EPOCHS, lr: float = XARES_LR) -> Path:
    """Write the xares task of ``hear_dir`` under ``out``; returns the task module's path."""
    from xares.audiowebdataset import write_audio_tar  # xares's writer, so xares reads what it wrote

    task = HearTask.open(hear_dir, events=True)
    name = _module_name(task.name)
    data = Path(out) / "env" / name
    if data.exists():
        raise TaskError(f"{data} exists already: remove it or export elsewhere")
    data.mkdir(parents=True)
    index = {label: i for i, label in enumerate(task.labels)}
    splits = task.folds or ["train", "valid", "test"]
    skipped: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for split in splits:
        entries = json.loads((task.root / f"{split}.json").read_text())
        paths, labels = [], []
        for file, value in entries.items():
            path = task.root / str(SAMPLE_RATE) / split / file
            try:
                n_samples = load_audio(path).numel()  # decoded whole: a corrupt file is caught here
                if n_samples < MIN_SAMPLES:
                    raise AudioFileError(f"{path}: {n_samples} samples at 16 kHz, fewer than ATST's {MIN_SAMPLES}")
            except AudioFileError as err:
                log.warning("skipping %s", err)
                skipped.setdefault(split, []).append(file)
                continue
            label = _clip_label(task, split, file, value, index, 1000.0 * n_samples / SAMPLE_RATE)
            paths.append(str(path))
            labels.append(label)
        if not paths:
            raise TaskError(f"{task.root.name}: split {split!r} has no readable clips")
        shards = min(SHARDS_PER_SPLIT, len(paths))
        write_audio_tar(paths, labels, str(data / audio_tar_pattern(split, kfold=bool(task.folds))), num_shards=shards)
        sizes[split] = len(paths)
    spec = TaskSpec(
        name=name,
        kind="frame" if task.embedding_type == "event" else "clip",
        labels=list(task.labels),
        multilabel=task.multilabel,
        metric="segmentf1_macro" if task.embedding_type == "event" else ("mAP" if task.multilabel else "accuracy"),
        splits=task.folds or ["trainvaltest"],
        # xares weighs a task by its test clips (k-fold: the mean fold)
        test_clips=round(sum(sizes.values()) / len(sizes)) if task.folds else sizes["test"],
        source=str(Path(hear_dir).resolve()),
        epochs=epochs,
        learning_rate=lr,
        skipped=skipped,
    )
    spec.write(data)
    (data / ".audio_tar_ready").touch()
    module = Path(out) / f"{name}_task.py"
    module.write_text(MODULE_TEMPLATE.format(name=name, source=spec.source, function=f"{name}_config"))
    n_skipped = sum(len(v) for v in skipped.values())
    log.info("exported %s (%s, %s) to %s; %d clips skipped", name, spec.kind, spec.metric, module, n_skipped)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atst_xares.task", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "hear_task", type=Path, help="a HEAR 2021 task folder (task_metadata.json, <split>.json, 16000/)"
    )
    parser.add_argument("out", type=Path, help="folder for the task module (<name>_task.py) and its data (env/<name>/)")
    parser.add_argument("--epochs", type=int, default=XARES_EPOCHS, help="epochs of xares's linear probe (xares: 10)")
    parser.add_argument("--lr", type=float, default=XARES_LR, help="learning rate of xares's probe (xares: 1e-3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        module = export_task(args.hear_task, args.out, epochs=args.epochs, lr=args.lr)
    except (TaskError, FileNotFoundError) as err:
        print(f"atst_xares.task: {err}", file=sys.stderr)
        return 2
    print(module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
