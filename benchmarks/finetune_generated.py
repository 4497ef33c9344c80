"""Frozen baseline vs fine-tuning on generated HEAR tasks (the table of docs/finetuning.md).

    .venv-current/bin/python benchmarks/finetune_generated.py --out benchmarks/finetune_generated_cpu.md

Randomly initialised tiny encoders (no pretrained weights exist offline), the `tiny` preset, one
`python -m pretrain finetune --baseline true` per task and family: a multiclass scene task (4 sound
kinds), a multilabel one (tags), and the temporal-order task (the same two sounds in either order;
fine-tuned here with layer decay 1, no mixup and no crop, as a random encoder needs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from measure import finetune_command, machine, write_report

from pretrain import write_random_checkpoint
from pretrain.finetune.generated_tasks import (
    ORDER_FINETUNE_FLAGS,
    make_multilabel_scene_task,
    make_order_task,
    make_scene_task,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        f"Machine: {machine()}",
        "",
        "| task | family | metric | frozen baseline | fine-tuned | fine-tuning wall time |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks = {
            "scene (4 sound kinds, multiclass)": (make_scene_task(root), []),
            "tags (multilabel)": (make_multilabel_scene_task(root), []),
            "temporal order (2 classes)": (make_order_task(root, counts=(96, 24, 48)), ORDER_FINETUNE_FLAGS),
        }
        for family in ("clip", "frame"):
            checkpoint = write_random_checkpoint(root / f"{family}.ckpt", "tiny", family=family, seed=0)
            for label, (task, flags) in tasks.items():
                out = root / f"run_{family}_{task.name}"
                start = time.perf_counter()
                command = finetune_command(checkpoint, task, out, "--preset", "tiny", "--baseline", "true", *flags)
                subprocess.run(command, check=True, capture_output=True)
                seconds = time.perf_counter() - start
                report = json.loads((out / "scores.json").read_text())
                metric = report["finetune"]["metric"]
                lines.append(
                    f"| {label} | {family} | {metric} | {report['frozen']['test_mean']:.3f} "
                    f"| {report['finetune']['test_mean']:.3f} | {seconds:.0f} s (both modes) |"
                )
                print(lines[-1], flush=True)
    print(lines[0])
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
