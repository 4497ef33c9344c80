"""The EVAR plugin's features (``atst_evar.features.EvarATST``, what ``evar/ar_atst_pkg.py``
delegates to) from the shipped configs, equal to atst_hear's on the same clips; its config checks;
the installer on a folder laid out as an EVAR checkout. EVAR itself is not on PyPI, so CI cannot
run it (nor import ``ar_atst_pkg.py``, which imports ``evar.ar_base``): docs/xares.md#evar records
the run against a real checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import atst_evar
from atst_evar.features import EvarATST, EvarConfigError
from atst_evar.install import IMPORT_LINE, install
from atst_hear import get_scene_embeddings, get_timestamp_embeddings, load_model

CONFIGS = Path(atst_evar.__file__).parent / "config"


def shipped(family: str, **changes) -> dict:
    cfg = yaml.safe_load((CONFIGS / f"atst_{family}_pkg.yaml").read_text())
    assert cfg["audio_repr"] == "ar_atst_pkg.AR_ATST_Pkg"
    return {**cfg, **changes}


@pytest.mark.parametrize("family", ["clip", "frame"])
def test_evar_features_equal_atst_hear(family, lightning_small_ckpt, frame_small_ckpt):
    ckpt = {"clip": lightning_small_ckpt, "frame": frame_small_ckpt}[family]
    cfg = shipped(family, weight_file=str(ckpt))
    n_blocks = cfg["n_blocks"]
    width = {"clip": 2 * n_blocks * 384, "frame": n_blocks * 384}[family]
    # the shipped configs are for base (768 wide): a small checkpoint needs its own feature_d
    with pytest.raises(EvarConfigError, match=f"set feature_d: {width}"):
        EvarATST(cfg)
    ar = EvarATST({**cfg, "feature_d": width})
    assert ar.family == family
    audio = 0.1 * torch.randn(3, 48000, generator=torch.Generator().manual_seed(1))  # EVAR's unit-length clips
    hear = load_model(str(ckpt), n_blocks=n_blocks)
    with torch.no_grad():
        torch.testing.assert_close(ar(audio), get_scene_embeddings(audio, hear), rtol=1e-4, atol=1e-6)
        frames, _ = get_timestamp_embeddings(audio, hear)
        torch.testing.assert_close(ar.encode_frames(audio), frames.transpose(1, 2), rtol=1e-4, atol=1e-6)

    # EVAR's fine-tuning augmentation (SpecAugment, random resize crop) acts on [B, 1, 64, T] log-mels
    def time_mask(mels):
        assert mels.ndim == 4 and mels.shape[:3] == (3, 1, 64)
        masked = mels.clone()
        masked[..., :40] = 0.0
        return masked

    with torch.no_grad():
        augmented = ar(audio, augment=time_mask)
        mels, frames = ar.extractor.mels(list(audio))
        mels[..., :40] = 0.0
        expected = ar.extractor.scene_embeddings_of_mels(mels, frames, n_blocks=n_blocks)
    torch.testing.assert_close(augmented, expected)
    assert not torch.allclose(augmented, ar(audio))
    # EVAR's fine-tuning trains through forward()
    ar.train()
    ar(audio[:1]).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ar.extractor.encoder.blocks[-1].parameters())


def test_evar_config_errors(lightning_small_ckpt, tmp_path):
    with pytest.raises(EvarConfigError, match="16 kHz"):
        EvarATST(shipped("clip", weight_file=str(lightning_small_ckpt), sample_rate=32000))
    with pytest.raises(EvarConfigError, match="no weight_file"):
        EvarATST(shipped("clip", weight_file=""))
    from pretrain.model.checkpoint import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError):
        EvarATST(shipped("clip", weight_file=str(tmp_path / "missing.ckpt")))


def test_install_into_an_evar_layout(tmp_path):
    """On a folder with EVAR's layout (evar/ar_base.py, config/, the runners' import blocks)."""
    root = tmp_path / "eval-audio-repr"
    (root / "evar").mkdir(parents=True)
    (root / "config").mkdir()
    (root / "evar" / "ar_base.py").write_text("class BaseAudioRepr: ...\n")
    head = "from evar.common import np\nimport evar.ar_spec\nimport evar.ar_atst_frame\n\n"
    (root / "lineareval.py").write_text(head + "def main(): ...\n")
    (root / "finetune.py").write_text("from evar.common import np\n\ndef main(): ...\n")
    written = install(root)
    assert (root / "evar" / "ar_atst_pkg.py").read_text() == (CONFIGS.parent / "ar_atst_pkg.py").read_text()
    assert {p.name for p in written} >= {"ar_atst_pkg.py", "atst_clip_pkg.yaml", "atst_frame_pkg.yaml", "finetune.py"}
    lines = (root / "lineareval.py").read_text().splitlines()
    assert lines.index(IMPORT_LINE) == lines.index("import evar.ar_atst_frame") + 1
    before = {p: p.read_text() for p in root.rglob("*.py")}
    install(root)  # again: nothing added twice
    assert {p: p.read_text() for p in root.rglob("*.py")} == before
    with pytest.raises(FileNotFoundError, match="not an EVAR checkout"):
        install(tmp_path)
