"""Print how far the package is from the official features of the shared parity fixture.

    .venv/bin/python benchmarks/parity_report.py [--shared ../shared]

Writes the fixture's random-weight Lightning checkpoint with ``shared/fixtures/official_ckpt.py``
(small, seed 42) and reports max |ours - official| / max |official| for the mel, the 12 layer
features and the scene embeddings of the 3.3 s and 8 s clips (tests/test_parity.py asserts < 1e-4).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pretrain import ATSTFeatureExtractor


def rel(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.numpy().astype(np.float64) - ref).max() / np.abs(ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    fixtures = args.shared / "fixtures"
    data = np.load(fixtures / "public_parity_small_seed42.npz")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "small_seed42.ckpt"
        script = fixtures / "official_ckpt.py"
        subprocess.run([sys.executable, str(script), str(ckpt), "small", "42", "lightning"], check=True, cwd=tmp)
        model = ATSTFeatureExtractor.from_checkpoint(ckpt)
    with torch.no_grad():
        audio = list(torch.from_numpy(data["audio_3.3s"]))
        mels, lengths = model.mels(audio)
        layers = model.encoder.forward_blocks(mels, lengths // 4, n_last=12)
        rows = {
            "mel (2 x 3.3 s)": rel(mels[:, None], data["mel_3.3s"]),
            "12 layer features (2 x 3.3 s)": rel(layers, data["layers_3.3s"]),
            "scene embedding (2 x 3.3 s)": rel(model.scene_embeddings(audio, n_blocks=12), data["scene12_3.3s"]),
            "scene embedding (1 x 8 s, 2 chunks)": rel(
                model.scene_embeddings(list(torch.from_numpy(data["audio_8s"])), n_blocks=12), data["scene12_8s"]
            ),
        }
    for name, value in rows.items():
        print(f"{name:40s} {value:.2e}")


if __name__ == "__main__":
    main()
