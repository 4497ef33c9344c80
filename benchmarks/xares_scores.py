"""X-ARES scores of ATST encoders through the real xares 0.1.3 (the table of docs/xares.md).

    .venv/bin/python benchmarks/xares_scores.py --clip runs/clip/checkpoints/final.ckpt \\
        --frame runs/frame/checkpoints/final.ckpt --out benchmarks/xares_scores_cpu.md

Tasks: the four rendered-sound HEAR tasks of ``python -m pretrain probe-tasks`` (drums, instrument
family, speaker, spoken commands; clip tasks, accuracy) and the generated event task (tone / noise
bursts; a frame task, segment F1), exported with ``python -m atst_xares.task --epochs 50 --lr 1e-2``:
xares's probe defaults (10 epochs, lr 1e-3) barely train on a few hundred clips (one or two batches
an epoch; measured: near chance for every encoder, F1 0 on the event task). Per family: a random
initialisation of the same size and seed (``write_random_checkpoint``) with ``--blocks last``, and
the pretrained checkpoint with ``last``, ``mean`` and ``all`` (score vs stored size). Each row is
one ``python -m atst_xares.run``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, write_report

from pretrain import inspect_checkpoint, write_random_checkpoint
from pretrain.finetune.generated_tasks import make_event_task

PROBE_TASKS = ("drum_hits", "instrument_family", "speaker", "speech_commands")
PROBE_FLAGS = ("--epochs", "50", "--lr", "1e-2")


def export_tasks(root: Path) -> list[Path]:
    hear = root / "hear"
    subprocess.run([sys.executable, "-m", "pretrain", "probe-tasks", str(hear)], check=True, capture_output=True)
    make_event_task(hear, counts=(48, 12, 12))
    modules = []
    for name in (*PROBE_TASKS, "synth_event"):
        done = subprocess.run(
            [sys.executable, "-m", "atst_xares.task", str(hear / name), str(root / "xares"), *PROBE_FLAGS],
            check=True,
            capture_output=True,
            text=True,
        )
        modules.append(Path(done.stdout.strip().splitlines()[-1]))
    return modules


def score(checkpoint: Path, blocks: str, modules: list[Path], work: Path) -> tuple[dict, float]:
    report = work / f"{checkpoint.stem}-{blocks}.json"
    start = time.perf_counter()
    command = [sys.executable, "-m", "atst_xares.run", "--checkpoint", str(checkpoint), "--blocks", blocks]
    command += ["--work", str(work), "--quiet", "--json", str(report), *map(str, modules)]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads(report.read_text()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, help="a pretrained ATST-Clip checkpoint (e.g. --preset tiny-long)")
    parser.add_argument("--frame", type=Path, help="a pretrained ATST-Frame checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisations")
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        modules = export_tasks(root)
        names = [m.stem.removesuffix("_task") for m in modules]
        header = " | ".join(names)
        lines = [
            f"Machine: {machine()}; xares 0.1.3, its linear probe (MLP score), {' '.join(PROBE_FLAGS)}.",
            "",
            f"| family | encoder | blocks | dim | {header} | mean | run time |",
            "|---|---|---|---|" + "---|" * len(names) + "---|---|",
        ]
        for family, trained in (("clip", args.clip), ("frame", args.frame)):
            if trained is None:
                continue
            info = inspect_checkpoint(trained).spec
            random = write_random_checkpoint(
                root / f"random_{family}.ckpt", info.arch or "tiny", family=family, seed=args.seed
            )
            for label, ckpt, blocks in (
                ("random init", random, "last"),
                ("pretrained", trained, "last"),
                ("pretrained", trained, "mean"),
                ("pretrained", trained, "all"),
            ):
                scores, seconds = score(ckpt, blocks, modules, root / "work")
                values = [scores[n]["mlp"] for n in names]
                dim = {"last": 1, "mean": 1}.get(blocks, info.depth) * info.embed_dim
                cells = " | ".join(f"{v:.3f}" for v in values)
                lines.append(
                    f"| {family} | {label} | {blocks} | {dim} | {cells} | {sum(values) / len(values):.3f} "
                    f"| {seconds:.0f} s |"
                )
                print(lines[-1], flush=True)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
