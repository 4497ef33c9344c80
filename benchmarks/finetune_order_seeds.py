"""How reliably does fine-tuning a random tiny encoder learn the order task? One run per seed and clip length.

    .venv-current/bin/python benchmarks/finetune_order_seeds.py --out benchmarks/finetune_order_seeds_cpu.md

The temporal-order task of pretrain/finetune/generated_tasks.py (the same tone and noise burst in either order; 96 / 24
/ 48 clips) at 2 s and at 1 s, fine-tuned with the test's flags (`ORDER_FINETUNE_FLAGS`) from the
same random checkpoint, ``--seed`` 0..N-1 (head initialisation, data order, drop path); the frozen
baseline once per length. This is the measurement behind `ORDER_TASK_SECONDS` and the test's bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from measure import finetune_command, machine, write_report

from pretrain import write_random_checkpoint
from pretrain.finetune.generated_tasks import ORDER_FINETUNE_FLAGS, make_order_task

TEST_BOUND = 0.8  # what tests/test_finetune.py asserts of the fine-tuned accuracy


def finetune(checkpoint: Path, task: Path, out: Path, seed: int, baseline: bool) -> dict:
    flags = ["--preset", "tiny", *ORDER_FINETUNE_FLAGS, "--seed", str(seed), "--baseline", str(baseline).lower()]
    subprocess.run(finetune_command(checkpoint, task, out, *flags), check=True, capture_output=True)
    return json.loads((out / "scores.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        f"Machine: {machine()}",
        "",
        f"Fine-tuned test accuracy (48 clips, 2 classes) per `--seed`; the test asserts >= {TEST_BOUND}.",
        "",
        f"| clip length | frozen baseline (seed 0) | fine-tuned, seeds 0..{args.seeds - 1} | seeds >= {TEST_BOUND} |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = write_random_checkpoint(root / "tiny.ckpt", "tiny", seed=0)
        for seconds in args.seconds:
            task = make_order_task(root / f"{seconds}s", seconds=seconds, counts=(96, 24, 48))
            tuned, frozen = [], None
            for seed in range(args.seeds):
                report = finetune(checkpoint, task, root / f"out_{seconds}_{seed}", seed, baseline=seed == 0)
                tuned.append(report["finetune"]["test_mean"])
                frozen = report["frozen"]["test_mean"] if seed == 0 else frozen
                print(f"{seconds} s, seed {seed}: {tuned[-1]:.3f}", flush=True)
            passed = sum(t >= TEST_BOUND for t in tuned)
            cells = " ".join(f"{t:.2f}" for t in tuned)
            lines.append(f"| {seconds:g} s | {frozen:.3f} | {cells} | {passed} of {len(tuned)} |")
    print("\n".join(lines))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
