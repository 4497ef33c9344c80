"""The official ATST-Clip training code and this package, side by side, on the same corpus and probe.

    # a checkout of Audio-WestlakeU/audiossl (not part of this project); einops, which its AST imports,
    # installed beside it (pip install --target ~/src/pylib einops)
    PYTHONPATH=~/src/pylib .venv/bin/python benchmarks/official_side_by_side.py --audiossl ~/src/audiossl \
        --work /tmp/sbs --out benchmarks/official_side_by_side_cpu.md

The harness stack (.venv: torch 2.4.1 with torchaudio, transformers) runs both. Official pieces are
used as they are: ``AST`` (the tiny shape of the ``tiny`` preset), ``MultiCropWrapper``, ``ByolLoss``,
``ATST.update_teacher``, ``ATSTTrainTransform`` (torchaudio mel, MinMax, per-clip Mixup bank and
Random Resize Crop), ``cosine_scheduler_step``, ``get_params_groups`` and ``transformers``' AdamW, in
the order of the official ``training_step`` (schedules, loss, step, teacher update). What this
script replaces, without changing the arithmetic: Lightning's loop (a plain loop, one process),
torchvision's ``Compose`` (the one torchvision name the transform uses; a chain of calls) and
``compute_var``'s CUDA all-reduce (the same variance on one process). Both runs use the ``tiny``
settings (batch 16, base lr 4e-3, warm-up 10, EMA 0.99, 2 s crops, no drop path) and this
package's online probe on the teacher every ``--probe-every`` steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

from measure import machine, write_report

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # the two runs share the machine, a core each
TASKS = ("speech_commands", "speaker", "instrument_family", "drum_hits")
TINY = {"dim": 192, "depth": 4, "heads": 3, "batch": 16, "base_lr": 4e-3, "warmup": 10, "ema": 0.99, "crop": 2.0}


def official_run(audiossl: Path, corpus: Path, tasks: list[Path], out: Path, steps: int, every: int, seed: int) -> None:
    """The official code's training loop, on this process (module docstring)."""
    import random
    from functools import partial

    import numpy as np
    import soundfile
    import torch
    from torch import nn

    sys.path.insert(0, str(audiossl))
    compose = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    compose.Compose = Compose
    sys.modules["torchvision"] = types.ModuleType("torchvision")
    sys.modules["torchvision.transforms"] = compose
    import audiossl.models.atst.byol as byol
    from audiossl.methods.atst.transform import ATSTTrainTransform
    from audiossl.models.atst.atst import ATST
    from audiossl.models.atst.audio_transformer import AST
    from audiossl.utils.common import cosine_scheduler_step, get_params_groups
    from transformers.optimization import AdamW

    del sys.modules["torchvision"], sys.modules["torchvision.transforms"]  # lightning's imports check for it
    byol.compute_var = lambda y: (y.reshape(-1, y.shape[-1]).var(dim=0) + 1e-6).sqrt()  # one process, no CUDA

    from pretrain.model.encoder import ATSTEncoder
    from pretrain.model.frontend import LogMelFrontEnd
    from pretrain.training.probe import ProbeTask, probe_encoder

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    c = TINY
    encoder = partial(
        AST,
        patch_h=64,
        patch_w=4,
        embed_dim=c["dim"],
        depth=c["depth"],
        num_heads=c["heads"],
        qkv_bias=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=0.0,
    )

    class TinyATST(ATST):  # the official ATST.__init__ with the tiny encoder shape
        def __init__(self):
            nn.Module.__init__(self)
            self.student = byol.MultiCropWrapper(encoder(), c["dim"], predictor=True)
            self.teacher = byol.MultiCropWrapper(encoder(), c["dim"], predictor=False)
            for p in self.teacher.parameters():
                p.requires_grad = False
            self.teacher.load_state_dict({k: v for k, v in self.student.state_dict().items() if "predictor" not in k})
            self.loss_fn = byol.ByolLoss(2)

    model = TinyATST().train()
    transform = ATSTTrainTransform(anchor_len=(c["crop"], c["crop"]), positive_len=(c["crop"], c["crop"]))
    wavs = [torch.from_numpy(soundfile.read(str(f), dtype="float32")[0])[None] for f in sorted(corpus.glob("*.wav"))]
    lr = c["base_lr"] * c["batch"] / 256
    lr_at = cosine_scheduler_step(lr, 1e-6, steps, c["warmup"])
    wd_at = cosine_scheduler_step(0.04, 0.4, steps, 0)
    ema_at = cosine_scheduler_step(c["ema"], 1, steps, 0)
    optimizer = AdamW(get_params_groups(model.student), lr=lr, weight_decay=0.0)
    frontend = LogMelFrontEnd()
    probe_tasks = [ProbeTask.load(t, frontend) for t in tasks]
    ours = ATSTEncoder(family="clip", embed_dim=c["dim"], depth=c["depth"], num_heads=c["heads"])
    order: list[int] = []
    with open(out, "w") as log:
        for step in range(steps + 1):
            if step % every == 0 or step == steps:
                loaded = ours.load_state_dict(model.teacher.encoder.state_dict(), strict=False)
                assert not loaded.unexpected_keys, loaded.unexpected_keys
                record = probe_encoder(ours, probe_tasks, c["crop"])
                log.write(json.dumps({"kind": "probe", "step": step, **record}) + "\n")
                log.flush()
            if step == steps:
                break
            if len(order) < c["batch"]:
                order += list(np.random.permutation(len(wavs)))
            batch, order = order[: c["batch"]], order[c["batch"] :]
            crops, lengths = zip(*(transform(wavs[i]) for i in batch), strict=True)
            mels = [torch.stack([crop[v] for crop in crops]) for v in range(2)]
            lens = [torch.tensor([length[v] for length in lengths]) for v in range(2)]
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = lr_at[step]
                if i == 0:
                    group["weight_decay"] = wd_at[step]
            loss, _, _ = model(mels, lens)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.update_teacher(ema_at[step + 1] if step + 1 < steps else 1.0)  # Lightning's global_step + 1
            log.write(json.dumps({"kind": "train", "step": step, "loss": loss.item()}) + "\n")


def package_run(corpus: Path, tasks: list[Path], run_dir: Path, steps: int, every: int, seed: int) -> None:
    command = [sys.executable, "-m", "pretrain", "train", "--preset", "tiny", "--data", str(corpus)]
    command += ["--run-dir", str(run_dir), "--max-steps", str(steps), "--seed", str(seed), "--log-every", "1"]
    command += ["--probe", ",".join(map(str, tasks)), "--probe-every", str(every), "--checkpoint-every", str(steps)]
    subprocess.run(command, check=True, capture_output=True, env=ONE_THREAD)


def windows(values: dict[int, float], edges: list[int]) -> list[float]:
    """Mean of ``values`` over each window ``[edges[i], edges[i + 1])``."""
    out = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        inside = [v for s, v in values.items() if lo <= s < hi]
        out.append(sum(inside) / len(inside))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audiossl", type=Path, help="checkout of Audio-WestlakeU/audiossl")
    parser.add_argument("--work", type=Path, required=True, help="corpus, tasks and both runs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from pretrain.training.probe import read_probe
    from pretrain.training.rendered_sound import make_probe_tasks, make_rendered_corpus

    corpus, task_root = args.work / "corpus", args.work / "tasks"
    if not corpus.is_dir():
        make_rendered_corpus(corpus, n_clips=900, seed=0)
    tasks = [task_root / t for t in TASKS] if task_root.is_dir() else make_probe_tasks(task_root, seed=100)
    official_log = args.work / "official.jsonl"
    if args.official_only:  # the child process of the side-by-side
        official_run(args.audiossl, corpus, tasks, official_log, args.steps, args.probe_every, args.seed)
        return
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--official-only"], env=ONE_THREAD)
    package_run(corpus, tasks, args.work / "package", args.steps, args.probe_every, args.seed)
    if child.wait():
        raise SystemExit("the official run failed")
    wall = time.perf_counter() - start

    records = [json.loads(line) for line in official_log.read_text().splitlines()]
    official_probe = {r["step"]: r for r in records if r["kind"] == "probe"}
    official_loss = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    package_probe = {r["step"]: r for r in read_probe(args.work / "package")}
    with open(next((args.work / "package" / "csv").glob("version_*/metrics.csv")), newline="") as f:
        package_loss = {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    steps = sorted(official_probe)
    losses = [windows(official_loss, steps), windows(package_loss, steps)]
    lines = [
        f"Machine: {machine()}; both runs at once, {wall / 60:.0f} min",
        "",
        f"`tiny` settings, {args.steps} steps, seed {args.seed}, rendered corpus of 900 clips; probe on the "
        "held-out rendered tasks (k-NN accuracy, chance 0.125). Each cell: official / package.",
        "",
        "| step | mean loss since previous row | effective rank | mean k-NN | "
        + " | ".join(f"{t} k-NN" for t in TASKS)
        + " | mean linear |",
        "|---|---|---|---|" + "---|" * len(TASKS) + "---|",
    ]
    for i, step in enumerate(steps):
        pair = official_probe[step], package_probe[step]
        loss = "" if i == 0 else f"{losses[0][i - 1]:.3f} / {losses[1][i - 1]:.3f}"
        linear = [sum(r[f"{t}/linear"] for t in TASKS) / len(TASKS) for r in pair]
        cells = [f"{pair[0][f'{t}/knn']:.2f} / {pair[1][f'{t}/knn']:.2f}" for t in TASKS]
        lines.append(
            f"| {step} | {loss} | {pair[0]['effective_rank']:.1f} / {pair[1]['effective_rank']:.1f} | "
            f"{pair[0]['mean_knn']:.3f} / {pair[1]['mean_knn']:.3f} | " + " | ".join(cells)
            + f" | {linear[0]:.3f} / {linear[1]:.3f} |"
        )
    print("\n".join(lines))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
