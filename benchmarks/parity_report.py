"""Print how far the package is from the official features of the parity fixtures (tests/fixtures).

    .venv/bin/python benchmarks/parity_report.py [--fixtures tests/fixtures]

Writes the fixtures' random-weight checkpoints with their official-layout writers (ATST-Clip small seed
42, ``official_ckpt.py``; ATST-Frame small seed 43, ``official_frame_ckpt.py``) and reports
max |ours - official| / max |official| (tests/test_parity.py and tests/test_frame.py assert
< 1e-4):

* Clip: mel, the 12 layer features, the scene embeddings of the 3.3 s and 8 s clips;
* Frame: mel, the 12 layer features, this package's HEAR features where they coincide with the
  official functions (single-chunk clips), and the official functions themselves (1001-frame
  chunks, token-start timestamps, zero-vector tails) reproduced with this package's encoder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import atst_hear
from pretrain import ATSTFeatureExtractor
from pretrain.reference import frame_official_scene_embedding, frame_official_timestamp_embedding


def rel(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.numpy().astype(np.float64) - ref).max() / np.abs(ref).max())


def write(script: Path, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(script), str(out), *args], check=True, cwd=out.parent)
    return out


def clip_rows(fixtures: Path, tmp: Path) -> dict[str, float]:
    data = np.load(fixtures / "public_parity_small_seed42.npz")
    model = ATSTFeatureExtractor.from_checkpoint(write(fixtures / "official_ckpt.py", tmp / "c.ckpt", "small", "42"))
    audio = list(torch.from_numpy(data["audio_3.3s"]))
    mels, lengths = model.mels(audio)
    layers = model.encoder.forward_blocks(mels, lengths // 4, n_last=12)
    long_clip = list(torch.from_numpy(data["audio_8s"]))
    return {
        "Clip mel (2 x 3.3 s)": rel(mels[:, None], data["mel_3.3s"]),
        "Clip 12 layer features (2 x 3.3 s)": rel(layers, data["layers_3.3s"]),
        "Clip scene embedding (2 x 3.3 s)": rel(model.scene_embeddings(audio, n_blocks=12), data["scene12_3.3s"]),
        "Clip scene embedding (1 x 8 s, 2 chunks)": rel(
            model.scene_embeddings(long_clip, n_blocks=12), data["scene12_8s"]
        ),
    }


def frame_rows(fixtures: Path, tmp: Path) -> dict[str, float]:
    data = np.load(fixtures / "public_parity_frame_small_seed43.npz")
    hear = atst_hear.load_model(str(write(fixtures / "official_frame_ckpt.py", tmp / "f.ckpt", "small", "43")))
    enc, dim = hear.extractor.encoder, hear.extractor.encoder.embed_dim
    rows = {}
    last_block = {"2.5s": data["tokens12_2.5s"][..., -dim:], "7.3s": data["tokens1_7.3s"]}
    for clip, expected_tokens in last_block.items():
        audio = torch.from_numpy(data[f"audio_{clip}"])
        mels, lengths = hear.extractor.mels(list(audio))
        rows[f"Frame mel ({clip})"] = rel(mels[:, None], data[f"mel_{clip}"])
        if clip == "2.5s":
            layers = enc.forward_blocks(mels, lengths // 4)
            rows["Frame 12 layer features (2 x 2.5 s)"] = rel(layers, as_layers(data["tokens12_2.5s"], dim))
        emb, _ = atst_hear.get_timestamp_embeddings(audio, hear)
        rows[f"Frame HEAR timestamp embedding, last block ({clip})"] = rel(emb[..., -dim:], expected_tokens)
        scene = atst_hear.get_scene_embeddings(audio, hear)
        rows[f"Frame HEAR scene embedding ({clip})"] = rel(scene, data[f"scene12_{clip}"])
    long_audio = torch.from_numpy(data["audio_23.7s"])
    for clip, audio in (("23.7s", long_audio), ("10.02s", long_audio[:, :160320])):
        mel4d = hear.extractor.mels(list(audio))[0][:, None]
        scene = frame_official_scene_embedding(enc, mel4d)
        rows[f"Frame official get_scene_embedding ({clip}), our encoder"] = rel(scene, data[f"scene12_{clip}"])
        if clip == "23.7s":
            tokens1, _ = frame_official_timestamp_embedding(enc, mel4d, 1)
            rows["Frame official get_timestamp_embedding (23.7 s, 3 chunks)"] = rel(tokens1, data["tokens1_23.7s"])
    return rows


def as_layers(tokens12: np.ndarray, dim: int) -> np.ndarray:
    """The fixture's concatenated 12-block tokens (B, T, 12 D) as layers (12, B, T, D)."""
    batch, n_tokens, _ = tokens12.shape
    return tokens12.reshape(batch, n_tokens, 12, dim).transpose(2, 0, 1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
    parser.add_argument("--fixtures", type=Path, default=default, help="folder of the parity fixtures and writers")
    args = parser.parse_args()
    fixtures = args.fixtures.resolve()  # the writers run in a temp dir
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        rows = clip_rows(fixtures, Path(tmp)) | frame_rows(fixtures, Path(tmp))
    print(f"torch {torch.__version__}")
    for name, value in rows.items():
        print(f"{name:72s} {value:.2e}")


if __name__ == "__main__":
    main()
