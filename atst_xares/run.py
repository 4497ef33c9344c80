"""Run X-ARES on one ATST checkpoint without xares's traps.

    python -m atst_xares.run --checkpoint CKPT [--work DIR] [--data DIR] [--blocks B] TASK...

``TASK`` is an xares task module: a file (``OUT/<name>_task.py`` from ``atst_xares.task``, or one
of xares's ``src/tasks/*.py``) or a dotted name. What it does about xares 0.1.3's traps:

* xares keys its caches (embeddings, probe checkpoints, ``mlp_score.txt``) by the encoder's class
  name, so a second checkpoint would silently reuse the first one's scores. Here every checkpoint
  and setting gets its own working folder, ``WORK/<stem>-<sha256 of the file and settings>/``, with
  the task data linked into its ``env/`` (never copied, never written to).
* Without CUDA, xares's default ``--max-jobs 1`` divides by the number of GPUs (ZeroDivisionError):
  ``--max-jobs 0`` is passed there.
* xares exits 0 when a stage fails, logging the error only: its log is read, and a failure exits
  1 naming the stage; so does a task that ends without a score, and one whose shards were not all
  encoded (xares's reader skips an unreadable shard with a hidden warning and scores the rest).
* The checkpoint is checked (exists, is an ATST checkpoint) before xares starts.

Scores go to the terminal and to ``scores.json`` in the working folder (or ``--json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from atst_xares.settings import (
    DEFAULT_BLOCKS,
    EncoderSettings,
    EncoderSettingsError,
    check_blocks,
    check_precision,
    settings_env,
)
from pretrain.model.checkpoint import CheckpointError
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.registry import resolve_checkpoint

ENCODER_MODULE = "atst_xares.encoder"
ENCODER_CLASS = "ATSTXaresEncoder"  # xares's cache key (XaresTask.encoder_name)
# What xares 0.1.3 logs when a stage fails and it returns 0 anyway (xares/run.py)
FAILURE_PATTERNS = (
    (re.compile(r"Error in stage (\d) \((\w+)\): (.*)"), None),
    (re.compile(r"Task filename pattern error: (.*)"), "1 (encode)"),
    (re.compile(r"(CUDA out of memory.*)"), "1 (encode)"),
    (re.compile(r"(This may be caused by Zenodo.*)"), "0 (download)"),
    (re.compile(r"(Task \S+ is private and not ready, skipping\.)"), "2 (score)"),
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class XaresRunError(RuntimeError):
    """A stage of xares failed, or a task ended without a score."""


@dataclass
class TaskModule:
    """A task module as xares imports it (``module``, relative to ``path_entry``), its task name,
    where its data are, the shard patterns of its splits and whether xares crops its clips."""

    module: str
    path_entry: str | None
    name: str
    data: Path | None  # where its audio shards are, if found
    shard_patterns: list[str]
    crops: bool


def resolve_task(spec: str, data_root: Path | None) -> TaskModule:
    """A task file or dotted name -> how xares imports it and where its data lie."""
    from xares.utils import attr_from_py_path

    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"task module {spec} not found")
        module, entry = path.stem, str(path.resolve().parent)
    else:
        module, entry = spec, None
    if entry is not None and entry not in sys.path:
        sys.path.insert(0, entry)  # to read the task's name here, as xares will import it there
    try:
        config = attr_from_py_path(module, endswith="_config")(None)
    except ValueError as err:
        raise XaresRunError(f"task {spec}: {err}") from None
    name = config.name
    candidates = [data_root / name] if data_root is not None else []
    if entry is not None:
        candidates.append(Path(entry) / "env" / name)  # atst_xares.task's layout
    candidates.append(Path("env") / name)  # xares's own: ./env/<name>
    data = next((c.resolve() for c in candidates if c.is_dir()), None)
    patterns = [str(p) for p in config.audio_tar_name_of_split.values()]
    return TaskModule(module, entry, name, data, patterns, config.crop_length is not None)


def settings_key(checkpoint: Path, settings: EncoderSettings) -> str:
    """A short digest of the checkpoint's bytes and the settings that change the features."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    digest.update(f"{settings.blocks}|{settings.precision}".encode())
    return digest.hexdigest()[:16]


DATA_STAMP = ".atst-data"


def _fingerprint(files: list[Path]) -> str:
    return hashlib.sha256(
        "\n".join(f"{f} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files).encode()
    ).hexdigest()


def link_task_data(task: TaskModule, env: Path) -> None:
    """Link the task's data files (shards, ready marker, task.json) into ``env/<name>/``; xares writes
    its embeddings and probe checkpoints beside them, in the working folder only. Data that changed
    since the folder was made (another export under the task's name, moved files) start it afresh:
    xares would otherwise reuse the embeddings and scores of the old data."""
    target = env / task.name
    if task.data is None:
        target.mkdir(parents=True, exist_ok=True)
        return  # xares downloads it (stage 0) into the working folder
    files = sorted(item for item in task.data.iterdir() if item.is_file())
    stamp = _fingerprint(files)
    stamp_file = target / DATA_STAMP
    if target.exists() and not (stamp_file.is_file() and stamp_file.read_text() == stamp):
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    for item in files:
        link = target / item.name
        if link.is_symlink() and link.readlink() == item:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(item)
    (target / DATA_STAMP).write_text(stamp)


def xares_failures(lines: list[str]) -> list[str]:
    failures = []
    for line in lines:
        for pattern, stage in FAILURE_PATTERNS:
            match = pattern.search(line)
            if match:
                where = f"{match.group(1)} ({match.group(2)})" if stage is None else stage
                failures.append(f"xares stage {where} failed: {match.groups()[-1].strip()}")
    return failures


def _clips_in(shard: Path, suffix: str) -> int | None:
    try:
        with tarfile.open(shard) as tar:
            return sum(1 for member in tar if member.name.endswith(suffix))
    except (tarfile.TarError, OSError):
        return None


def lost_clips(work: Path, task: TaskModule) -> list[str]:
    """Shards xares could not read: its WebDataset handler warns and goes on, so a corrupt shard's
    clips would silently be left out of the embeddings and the scores."""
    folder = work / "env" / task.name
    audio = sorted({p for pattern in task.shard_patterns for p in folder.glob(pattern)})
    encoded = sorted((folder / "embeddings" / ENCODER_CLASS).glob("*.tar"))
    if not audio or not encoded or task.crops:  # cropped clips give several embeddings each
        return []
    problems = [f"{p.name} is not a readable tar" for p in audio if _clips_in(p, ".json") is None]
    given = sum(_clips_in(p, ".json") or 0 for p in audio)
    done = sum(_clips_in(p, ".npy") or 0 for p in encoded)
    if problems or done < given:
        problems.append(f"{done} of the {given} readable clips of task {task.name} were encoded")
    return problems


def read_scores(work: Path, tasks: list[TaskModule], to_stage: int) -> dict[str, dict[str, float]]:
    scores = {}
    for task in tasks:
        folder = work / "env" / task.name / "checkpoints" / ENCODER_CLASS
        entry = {}
        for probe in ("mlp", "knn"):
            path = folder / f"{probe}_score.txt"
            if path.is_file():
                value, weight = path.read_text().split()[:2]
                entry[probe] = float(value)
                entry["test_clips"] = int(weight)
        if to_stage >= 2 and "mlp" not in entry:
            raise XaresRunError(f"xares stage 2 (score) wrote no score for task {task.name} (log: {work}/xares.log)")
        scores[task.name] = entry
    return scores


def run_xares(
    checkpoint: str,
    tasks: list[str],
    *,
    work: Path = Path("xares_work"),
    data_root: Path | None = None,
    settings: EncoderSettings | None = None,
    max_jobs: int | None = None,
    from_stage: int = 0,
    to_stage: int = 2,
    quiet: bool = False,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Run ``python -m xares.run`` on ``checkpoint`` in its own working folder; returns the folder and
    ``{task: {"mlp": score, "knn": score, "test_clips": n}}``. Raises ``XaresRunError`` when xares
    logs a failure or ends without a score, ``CheckpointError`` for an unusable checkpoint."""
    import torch

    settings = settings or EncoderSettings(checkpoint)
    path = Path(resolve_checkpoint(checkpoint))
    extractor = ATSTFeatureExtractor.from_checkpoint(path)  # fails here, by name, for a foreign file
    settings = EncoderSettings(str(path.resolve()), settings.blocks, settings.precision)
    settings.n_blocks(extractor.depth)
    del extractor
    modules = [resolve_task(t, data_root) for t in tasks]
    folder = Path(work) / f"{path.stem}-{settings_key(path, settings)}"
    for task in modules:
        link_task_data(task, folder / "env")
    if max_jobs is None:
        max_jobs = 1 if torch.cuda.is_available() else 0
    env = {**os.environ, **settings_env(settings)}
    # task files' folders, and the working directory for dotted names (xares runs in the folder)
    entries = [m.path_entry for m in modules if m.path_entry] + [os.getcwd(), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(e for e in entries if e)
    command = [sys.executable, "-m", "xares.run", "--max-jobs", str(max_jobs)]
    command += ["--from-stage", str(from_stage), "--to-stage", str(to_stage), ENCODER_MODULE]
    command += [m.module for m in modules]
    lines = []
    with open(folder / "xares.log", "w") as log:
        proc = subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(ANSI.sub("", line))
            if not quiet:
                sys.stdout.write(line)
        code = proc.wait()
    failures = xares_failures(lines)
    if failures:
        raise XaresRunError("; ".join(failures) + f" (log: {folder / 'xares.log'})")
    if code != 0:
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        raise XaresRunError(f"xares exited with {code}: {last} (log: {folder / 'xares.log'})")
    lost = [problem for task in modules for problem in lost_clips(folder, task)] if to_stage >= 1 else []
    if lost:
        raise XaresRunError("xares stage 1 (encode) lost clips: " + "; ".join(lost) + f" (log: {folder / 'xares.log'})")
    scores = read_scores(folder, modules, to_stage)
    (folder / "scores.json").write_text(json.dumps(scores, indent=2))
    return folder, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atst_xares.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="+", help="xares task modules: files (<name>_task.py) or dotted names")
    parser.add_argument("--checkpoint", required=True, help="ATST checkpoint (either family) or a registered name")
    parser.add_argument("--work", type=Path, default=Path("xares_work"), help="parent of the per-checkpoint folders")
    parser.add_argument(
        "--data", type=Path, help="folder holding <task name>/ data (default: beside the task module, then ./env)"
    )
    parser.add_argument(
        "--blocks",
        default=DEFAULT_BLOCKS,
        help="mean (default: of all blocks), last, all, or N: the last N blocks concatenated",
    )
    parser.add_argument("--precision", default="float32", help="encoder precision: float32, bfloat16, float16")
    parser.add_argument("--max-jobs", type=int, help="xares's parallel tasks (default: 1 with CUDA, 0 without)")
    parser.add_argument("--from-stage", type=int, default=0, help="first xares stage: 0 data, 1 encode, 2 score")
    parser.add_argument("--to-stage", type=int, default=2, help="last xares stage")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--quiet", action="store_true", help="do not echo xares's log (it is kept in the folder)")
    args = parser.parse_args(argv)
    try:
        settings = EncoderSettings(args.checkpoint, check_blocks(args.blocks), check_precision(args.precision))
        folder, scores = run_xares(
            args.checkpoint,
            args.tasks,
            work=args.work,
            data_root=args.data,
            settings=settings,
            max_jobs=args.max_jobs,
            from_stage=args.from_stage,
            to_stage=args.to_stage,
            quiet=args.quiet,
        )
    except (XaresRunError, CheckpointError, EncoderSettingsError, FileNotFoundError) as err:
        print(f"atst_xares.run: {err}", file=sys.stderr)
        return 1
    print(f"\n{'task':<28} {'MLP':>8} {'kNN':>8}  (working folder {folder})")
    for name, entry in scores.items():
        knn = f"{entry['knn']:.4f}" if "knn" in entry else "-"
        print(f"{name:<28} {entry.get('mlp', float('nan')):>8.4f} {knn:>8}")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
