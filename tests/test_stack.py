"""The package installs and runs without torchaudio (torchaudio's last release is 2.11)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement


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
