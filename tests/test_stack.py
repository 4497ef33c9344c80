"""How the package installs: without torchaudio (its last release is 2.11), beside the user's torch, as a core
install without extras, from the repository alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from packaging.requirements import Requirement

from tests.support.pip_install import REPO, USER_PIP, would_install


def test_core_runs_with_torchaudio_unimportable(tiny_ckpt):
    code = (
        "import sys\n"
        "sys.modules['torchaudio'] = None  # any import of it fails\n"
        "import torch, atst_hear, atst_upstream.expert, atst_upstream.hubconf, pretrain.training.train\n"
        "from pretrain.model.audio_io import resample\n"
        "import numpy as np\n"
        "assert resample(np.zeros(44100, np.float32), 44100).shape == (16000,)\n"
        f"model = atst_hear.load_model({str(tiny_ckpt)!r})\n"
        "print(tuple(atst_hear.get_scene_embeddings(0.1 * torch.randn(2, 16000), model).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "(2, 1536)"


def test_installed_requirements_name_no_torchaudio_outside_the_s3prl_extra():
    requirements = [Requirement(r) for r in metadata.requires("atst-plugins") or []]
    base = [r.name for r in requirements if r.marker is None]
    assert {"torch", "numpy", "soundfile", "soxr"} <= set(base)
    assert "torchaudio" not in base
    with_torchaudio = [str(r.marker) for r in requirements if r.name == "torchaudio"]
    assert all("s3prl" in marker for marker in with_torchaudio)


# --- installing beside the user's torch ---------------------------------------------------------


def test_installing_the_package_keeps_the_installed_torch():
    """What `pip install .[pretrain]` would install here, beside this stack's torch: not torch."""
    installs = would_install("pretrain")
    assert "atst-plugins" in installs
    assert not installs & {"torch", "torchaudio", "numpy"}, installs


def test_the_repository_reads_and_cites_nothing_outside_it():
    """A clone of the repository alone is complete: no file points into a sibling folder."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    outside = ["../" + "shared", "DESIGN" + ".md", "ATST_" + "SHARED"]
    hits = []
    for name in listed.stdout.split():
        path = REPO / name
        if path.suffix in (".npz", ".png") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {word}" for word in outside if word in text]
    assert not hits


@pytest.mark.stack_independent
def test_core_install_in_a_fresh_venv(tmp_path):
    """`pip install .` alone, beside an older supported torch already installed: the torch stays,
    inference commands and atst_hear work, commands that need an extra say which in one line."""
    source = tmp_path / "atst-plugins"  # the tracked files, as a clone has them (the build writes beside them)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, cwd=tmp_path, **kwargs)

    for install in (["torch==2.13.0"], [str(source)]):  # torch 2.13.0: the CPU build this machine kind keeps on disk
        out = run("-m", "pip", "install", "--quiet", *install, env=USER_PIP)
        assert out.returncode == 0, out.stderr[-3000:]
    assert run("-c", "import torch; print(torch.__version__)").stdout.strip().startswith("2.13.0")
    for module in ("yaml", "lightning", "torchaudio"):  # really the core install
        assert run("-c", f"import {module}").returncode != 0, module

    assert run("-m", "pretrain", "init", "m.ckpt", "--arch", "tiny", "--family", "frame").returncode == 0
    inspected = run("-m", "pretrain", "inspect", "m.ckpt")
    assert inspected.returncode == 0 and "frame" in inspected.stdout.lower(), inspected.stderr
    import soundfile

    soundfile.write(tmp_path / "a.wav", 0.1 * np.sin(np.arange(22050) / 7.0), 22050)
    embedded = run("-m", "pretrain", "embed", "m.ckpt", "a.wav")
    assert embedded.returncode == 0 and "scene embedding (768,)" in embedded.stdout, embedded.stderr
    hear = run(
        "-c",
        "import atst_hear, atst_upstream.hubconf, torch; m = atst_hear.load_model('m.ckpt'); "
        "print(tuple(atst_hear.get_scene_embeddings(torch.zeros(1, 16000), m).shape))",
    )
    assert hear.returncode == 0 and hear.stdout.strip() == "(1, 768)", hear.stderr
    assert run("-m", "pretrain", "train", "--help").returncode == 0

    needs = {
        ("-m", "pretrain", "train", "--data", "."): "[pretrain]",
        ("-m", "pretrain", "shard", ".", "out", "--shard-size", "4"): "[pretrain]",
        ("-m", "pretrain", "finetune", "--checkpoint", "m.ckpt", "--task", ".", "--out", "ft"): "[pretrain]",
        ("-m", "pretrain", "export", "m.ckpt", "m.safetensors"): "[pretrain]",
        ("-m", "atst_hear.run_heareval", "embeddings"): "[hear]",
        ("-m", "atst_upstream.run_downstream", "-m", "train"): "[s3prl]",
    }
    for command, extra in needs.items():
        out = run(*command)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, (command, out.stderr)
        assert f"needs the {extra} extra" in lines[0] and "pip install" in lines[0], lines[0]


def test_no_source_file_is_hidden_by_gitignore():
    """What the package and the suite need is committed: a pattern such as ``runs/`` once hid a
    package folder, and only a fresh clone noticed."""
    folders = ["pretrain", "atst_hear", "atst_upstream", "tests", "benchmarks", "scripts", "docs"]
    out = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *folders],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    hidden = [name for name in out.stdout.split() if name.endswith((".py", ".md", ".yaml", ".json", ".npz", ".sh"))]
    assert not hidden
