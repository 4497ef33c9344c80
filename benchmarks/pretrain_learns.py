"""Does pretraining learn? A CPU-sized preset on rendered real sound, probed on held-out tasks.

    .venv-current/bin/python benchmarks/pretrain_learns.py --out benchmarks/pretrain_learns_cpu.md

Renders an unlabelled corpus (speech by espeak-ng / flite voices, General MIDI instruments and
drums by fluidsynth; `pretrain.training.rendered_sound`) and four held-out HEAR probe tasks drawn
from other seeds (spoken command words, speaker, instrument family, drum hits over music), then
runs `python -m pretrain train --preset PRESET --probe ...` for each seed and reports the online
probe (k-NN and linear accuracy on test, the collapse measures) at step 0 -- the same encoder at
its random initialisation -- and at the end, beside the weight-free log-mel baseline. The probe's
share of the run's wall time is reported too. Needs Debian's espeak-ng, flite, fluidsynth and
timgm6mb-soundfont (scripts/setup_env.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, write_report

from pretrain.model.hear_task import HearTask
from pretrain.training.probe import plot_probe, read_probe
from pretrain.training.rendered_sound import make_probe_tasks, make_rendered_corpus

KINDS = {"speech_commands": "speech", "speaker": "speech", "instrument_family": "music", "drum_hits": "events"}
# 40 test clips per label (320 per task): the standard error of an accuracy near 0.3 is then about 2.6
# points, against 5.7 with the 8 per label of `probe-tasks`' default, which cannot show a 10-point gain
PER_CLASS = (12, 4, 40)


def clips_per_class(task: Path) -> list[int]:
    """Train, valid and test clips per label of a probe task, as written (a reused --work keeps its own)."""
    n_labels = len(HearTask.open(task).labels)
    return [len(json.loads((task / f"{split}.json").read_text())) // n_labels for split in ("train", "valid", "test")]


def run(preset: str, corpus: Path, tasks: list[Path], run_dir: Path, seed: int, steps: int | None) -> float:
    command = [sys.executable, "-m", "pretrain", "train", "--preset", preset, "--data", str(corpus)]
    command += ["--run-dir", str(run_dir), "--seed", str(seed), "--probe", ",".join(map(str, tasks))]
    if steps:
        command += ["--max-steps", str(steps)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-long")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--corpus-clips", type=int, default=1800)
    parser.add_argument(
        "--per-class",
        type=int,
        nargs=3,
        default=PER_CLASS,
        metavar=("TRAIN", "VALID", "TEST"),
        help="probe-task clips per label and split (default: a test split five times the CLI's)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep corpus, tasks and runs here")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="draw the first seed's probe curves here")
    parser.add_argument("--reuse", action="store_true", help="keep the finished runs found in --work")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pretrain_learns_"))
    corpus, task_root = work / "corpus", work / "tasks"
    if not corpus.is_dir():
        make_rendered_corpus(corpus, n_clips=args.corpus_clips, seed=0)
    if task_root.is_dir():
        tasks = sorted(task_root.iterdir())
    else:
        tasks = make_probe_tasks(task_root, per_class=tuple(args.per_class), seed=100)
    names = [t.name for t in tasks]
    per_class = clips_per_class(tasks[0])

    results = {}
    for seed in args.seeds:
        run_dir = work / f"run_seed{seed}"
        if args.reuse and (run_dir / "wall_seconds").is_file():
            wall = float((run_dir / "wall_seconds").read_text())
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            wall = run(args.preset, corpus, tasks, run_dir, seed, args.steps)
            (run_dir / "wall_seconds").write_text(f"{wall:.1f}\n")
        records = read_probe(run_dir)
        results[seed] = (records[0], records[-1], wall)
        if args.plot and seed == args.seeds[0]:
            plot_probe(run_dir, args.plot, title=f"{args.preset}, seed {seed}")

    first = results[args.seeds[0]][0]
    lines = [
        f"Machine: {machine()}",
        "",
        f"`--preset {args.preset}`{f' --max-steps {args.steps}' if args.steps else ''}, corpus of "
        f"{args.corpus_clips} rendered clips, seeds {args.seeds}. Each cell: random init (step 0) -> end of "
        "pretraining; test accuracy of the probe fitted on train + valid (8 classes each, chance 0.125; "
        f"{per_class[0] + per_class[1]} fit and {per_class[2]} test clips per class).",
        "",
        "| task (kind) | metric | log-mel baseline | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
        "|---|---|---|" + "---|" * len(args.seeds),
    ]
    for name in names:
        for metric in ("knn", "linear"):
            cells = [
                f"{start[f'{name}/{metric}']:.3f} -> {end[f'{name}/{metric}']:.3f}"
                for start, end, _ in results.values()
            ]
            baseline = first[f"{name}/{metric}_logmel"]
            lines.append(f"| {name} ({KINDS.get(name, '?')}) | {metric} | {baseline:.3f} | " + " | ".join(cells) + " |")
    for key, label in (("effective_rank", "effective rank (all probe clips)"), ("dim_std", "per-dimension std")):
        cells = [f"{start[key]:.2f} -> {end[key]:.2f}" for start, end, _ in results.values()]
        lines.append(f"| {label} | | | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| seed | optimizer steps | wall time | probe time (share) |",
        "|---|---|---|---|",
    ]
    for seed, (_, end, wall) in results.items():
        probe_seconds = end["seconds"]
        lines.append(f"| {seed} | {end['step']} | {wall:.0f} s | {probe_seconds:.1f} s ({probe_seconds / wall:.1%}) |")
    print("\n".join(lines))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
