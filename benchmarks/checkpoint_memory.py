"""Memory and time of loading the encoder of a base-sized (1.46 GB) official-layout checkpoint.

    .venv/bin/python benchmarks/checkpoint_memory.py [--workdir DIR] [--out FILE.md]

Writes three files of the size and content of the official base releases (random weights):
ATST-Clip in the Lightning layout and in the DINO-style layout (student, teacher, heads, and a
full AdamW state with NumPy learning-rate values), and ATST-Frame base from the test suite's official-layout writer
(``official_frame_ckpt.py base 0 full``). Each loader runs in a fresh process that first imports
torch and the package; the figure is its peak resident memory (``VmHWM``) above that
baseline, and the wall time of the load, against the encoder's own size (parameters x 4 bytes):

* ``pretrain.load_encoder``: this package (restricted unpickler, reads the teacher's tensors only);
* ``torch.load``: the plain load the official code does (``weights_only=False``), then
  ``load_state_dict`` into an encoder: the reference;
* ``torch.load(mmap=True)``: memory-mapped, then ``load_state_dict``.

Needs about 4.5 GB of free disk in the work folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = REPO / "tests" / "fixtures"

from measure import machine, write_report  # noqa: E402

from pretrain.model.encoder import ATSTEncoder  # noqa: E402
from pretrain.training.teacher_student import projection_head  # noqa: E402

LOADERS = {
    "pretrain.load_encoder": "from pretrain import load_encoder\nencoder, spec = load_encoder(PATH)",
    "torch.load": (
        "from pretrain import ATSTEncoder\nimport torch\n"
        "ckpt = torch.load(PATH, map_location='cpu', weights_only=False)\n"
        "encoder = ATSTEncoder(family=FAMILY, embed_dim=768, num_heads=12)\n"
        "encoder.load_state_dict({k[len(PREFIX):]: v for k, v in SECTION.items() if k.startswith(PREFIX)})"
    ),
    "torch.load(mmap=True)": (
        "from pretrain import ATSTEncoder\nimport torch\n"
        "ckpt = torch.load(PATH, map_location='cpu', weights_only=False, mmap=True)\n"
        "encoder = ATSTEncoder(family=FAMILY, embed_dim=768, num_heads=12)\n"
        "encoder.load_state_dict({k[len(PREFIX):]: v for k, v in SECTION.items() if k.startswith(PREFIX)})"
    ),
}

PROBE = """
import json, sys, time
sys.path.insert(0, {repo!r})
import numpy, torch, pretrain  # the baseline: interpreter, torch and the package imported
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
base = status('VmHWM')
PATH, FAMILY, PREFIX = {path!r}, {family!r}, {prefix!r}
start = time.perf_counter()
{code}
seconds = time.perf_counter() - start
n_params = sum(p.numel() for p in encoder.parameters())
print(json.dumps({{'seconds': seconds, 'peak_above_baseline': status('VmHWM') - base, 'encoder_bytes': 4 * n_params}}))
"""


def _student_teacher_state(family: str, *, predictor: bool = True) -> tuple[dict, list[torch.Tensor]]:
    """Lightning-layout state dict of a base student/teacher pair; returns it and the student params."""
    state, student_params = {}, []
    for role in ("student", "teacher"):
        encoder = ATSTEncoder.from_arch("base", family=family)
        parts = {"encoder": encoder, "projector": projection_head(768)}
        if role == "student" and predictor:
            parts["predictor"] = projection_head(256)
        for part, module in parts.items():
            for key, value in module.state_dict().items():
                state[f"model.{role}.{part}.{key}"] = value
            if role == "student":
                student_params += [p.detach() for p in module.parameters()]
    return state, student_params


def _adamw_state(params: list[torch.Tensor], step: int) -> dict:
    lr = np.float64(1.2e-5)  # official: written from a NumPy schedule array
    return {
        "state": {
            i: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [
            {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": np.float64(0.4), "params": []},
            {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": list(range(len(params)))},
        ],
    }


def write_clip_lightning(path: Path) -> None:
    torch.manual_seed(0)
    state, params = _student_teacher_state("clip")
    hparams = {"arch": "base", "learning_rate": 2e-4 * 6 * 256 / 256, "train_len": 6.0, "max_steps": 318000}
    torch.save(
        {
            "epoch": 99,
            "global_step": 318000,
            "pytorch-lightning_version": "1.5.10",
            "state_dict": state,
            "optimizer_states": [_adamw_state(params, 318000)],
            "lr_schedulers": [],
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "kth_value": torch.tensor(1.0)}},
            "hyper_parameters": hparams,
        },
        path,
    )


def write_clip_dino(path: Path) -> None:
    torch.manual_seed(1)
    state, params = _student_teacher_state("clip", predictor=False)  # DINO-style: student = backbone + head

    def dino(role: str) -> dict:
        out = {}
        for key, value in state.items():
            if key.startswith(f"model.{role}.encoder."):
                out["module.backbone." + key.split(".encoder.", 1)[1]] = value
            elif key.startswith(f"model.{role}.projector."):
                out["module.head." + key.split(".projector.", 1)[1]] = value
        return out

    args = argparse.Namespace(arch="ast_base", anchor_len=[6.0, 6.0], lr=np.float64(2e-4), output_dir=Path("runs/base"))
    optimizer = _adamw_state(params, 318000)
    torch.save({"student": dino("student"), "teacher": dino("teacher"), "optimizer": optimizer, "epoch": 100,
                "args": args, "byol_loss": np.float32(0.3)}, path)


def write_frame(path: Path) -> None:
    generator = FIXTURES / "official_frame_ckpt.py"
    subprocess.run([sys.executable, str(generator), str(path), "base", "0", "full"], check=True)


FILES = {
    "ATST-Clip base, Lightning layout": (write_clip_lightning, "clip", "model.teacher.encoder.", "ckpt['state_dict']"),
    "ATST-Clip base, DINO-style layout": (write_clip_dino, "clip", "module.backbone.", "ckpt['teacher']"),
    "ATST-Frame base, Lightning layout": (write_frame, "frame", "model.teacher.encoder.", "ckpt['state_dict']"),
}


def measure(path: Path, family: str, prefix: str, section: str, loader: str) -> dict:
    code = LOADERS[loader].replace("SECTION", section)
    probe = PROBE.format(repo=str(REPO), path=str(path), family=family, prefix=prefix, code=code)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the 1.46 GB files (made if missing)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON")
    args = parser.parse_args()
    rows, raw = [], {}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name, (write, family, prefix, section) in FILES.items():
            path = Path(tmp) / "file.ckpt"
            started = time.perf_counter()
            write(path)
            size = path.stat().st_size
            print(f"{name}: {size / 1e9:.2f} GB written in {time.perf_counter() - started:.0f} s", flush=True)
            results = {loader: measure(path, family, prefix, section, loader) for loader in LOADERS}
            raw[name] = {"file_bytes": size, **results}
            reference = results["torch.load"]
            for loader, r in results.items():
                if "error" in r:
                    rows.append(f"| {name} | {loader} | failed: {r['error'][:60]} | | | |")
                    continue
                ratio = r["peak_above_baseline"] / r["encoder_bytes"]
                rows.append(
                    f"| {name} ({size / 1e9:.2f} GB) | {loader} | {r['peak_above_baseline'] / 1e6:.0f} MB "
                    f"| {ratio:.2f}x | {r['seconds']:.2f} s | {r['seconds'] / reference['seconds']:.2f}x |"
                )
            path.unlink()
    table = [
        f"Machine: {machine()}. Encoder: {raw[next(iter(raw))]['pretrain.load_encoder']['encoder_bytes'] / 1e6:.0f} MB"
        " (base, float32).",
        "",
        "| file | loader | peak memory above baseline | / encoder size | wall time | / torch.load |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(table))
    write_report(table, args.out)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
