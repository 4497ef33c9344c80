"""Frozen baseline vs fine-tuning on a rendered-sound event task (docs/finetuning.md#event-tasks).

    .venv-current/bin/python benchmarks/finetune_events.py --out benchmarks/finetune_events_cpu.md
    .venv-current/bin/python benchmarks/finetune_events.py --pretrain-steps 1500 ...   # + tiny-long rows
    .venv-current/bin/python benchmarks/finetune_events.py --pretrained-clip C.ckpt --pretrained-frame F.ckpt \
        --pretrained-label "tiny-long, 1,500 steps" ...                                  # files pretrained before

The task (`pretrain.training.rendered_sound.make_drum_event_task`): kick, snare and closed hi-hat
hits at random times over a louder instrument phrase of a random General MIDI program, rendered by
fluidsynth; 64 / 16 / 24 clips of 4 s. Per family (Clip, Frame), encoder (a random tiny one, and
with ``--pretrain-steps`` the ``tiny-long`` preset pretrained on a rendered corpus, or the files of
``--pretrained-clip`` / ``--pretrained-frame``) and head (linear, BiGRU): one
``python -m pretrain finetune --baseline true`` (both stages, then the frozen baseline on the
timestamp embeddings); test onset F-measure, segment error rate, PSDS1 and PSDS2 of each, and the
wall time of the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import finetune_command, machine, write_report

from pretrain import write_random_checkpoint
from pretrain.training.rendered_sound import make_drum_event_task, make_rendered_corpus

METRICS = ("event_onset_200ms_fms", "segment_1s_er", "psds1", "psds2")
FLAGS = ["--preset", "tiny", "--sed-stage1-epochs", "30", "--sed-stage2-epochs", "30", "--sed-batch-size", "16"]


def pretrained(family: str, root: Path, steps: int) -> Path:
    """``tiny-long`` (its own schedule, cut at ``steps``), seed 0, on the 1,800 rendered clips of
    benchmarks/pretrain_learns.py (speech, instrument phrases, drum patterns)."""
    corpus = root / "corpus"
    if not corpus.is_dir():
        make_rendered_corpus(corpus, n_clips=1800, seed=0)
    run_dir = root / f"pretrain_{family}"
    command = [sys.executable, "-m", "pretrain", "train", "--preset", "tiny-long", "--family", family, "--data",
               str(corpus), "--run-dir", str(run_dir), "--max-steps", str(steps), "--num-workers", "0"]
    subprocess.run(command, check=True, capture_output=True)
    return run_dir / "checkpoints" / "last.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown) as well as printing it")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="also pretrain tiny-long for this many steps per family and add its rows (0: random only)")
    for family in ("clip", "frame"):
        parser.add_argument(f"--pretrained-{family}", type=Path, default=None,
                            help=f"a pretrained {family.title()} checkpoint to add rows for")
    parser.add_argument("--pretrained-label", default="pretrained", help="the encoder column's name for those files")
    parser.add_argument("--heads", nargs="+", default=["linear", "bigru"], choices=["linear", "bigru"],
                        help="the heads to compare")
    args = parser.parse_args()
    lines = [
        f"Machine: {machine()}",
        f"Flags: {' '.join(FLAGS)} --baseline true",
        "",
        "| family | encoder | head | frozen: onset F / ER / PSDS1 / PSDS2 | fine-tuned: onset F / ER / PSDS1 / PSDS2 "
        "| wall time (both) |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        task = make_drum_event_task(root)
        for family in ("clip", "frame"):
            encoders = {"random init": write_random_checkpoint(root / f"{family}.ckpt", "tiny", family=family, seed=0)}
            given = args.pretrained_clip if family == "clip" else args.pretrained_frame
            if given is not None:
                encoders[args.pretrained_label] = given
            elif args.pretrain_steps:
                encoders[f"tiny-long, {args.pretrain_steps} steps"] = pretrained(family, root, args.pretrain_steps)
            for encoder, checkpoint in encoders.items():
                for head in args.heads:
                    out = root / f"run_{family}_{len(lines)}"
                    start = time.perf_counter()
                    command = finetune_command(checkpoint, task, out, *FLAGS, "--sed-head", head, "--baseline", "true")
                    subprocess.run(command, check=True, capture_output=True)
                    seconds = time.perf_counter() - start
                    report = json.loads((out / "scores.json").read_text())
                    cells = [
                        " / ".join(f"{report[mode]['test_means'][k]:.3f}" for k in METRICS)
                        for mode in ("frozen", "finetune")
                    ]
                    lines.append(f"| {family} | {encoder} | {head} | {cells[0]} | {cells[1]} | {seconds:.0f} s |")
                    print(lines[-1], flush=True)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
