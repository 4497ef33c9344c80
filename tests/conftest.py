"""Shared fixtures: checkpoint files on disk in every supported layout, made as the real ones are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import write_random_checkpoint
from tests.support.official_files import FIXTURES, encoder_weights, frame_checkpoint, official_checkpoint


@pytest.fixture(scope="session")
def parity_fixture() -> dict[str, np.ndarray]:
    data = np.load(FIXTURES / "public_parity_small_seed42.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def parity_small_ckpt(tmp_path_factory) -> Path:
    """The official-layout writer's file: the weights the parity fixture was computed with, nothing else."""
    return official_checkpoint(tmp_path_factory.mktemp("ckpt") / "small_seed42.ckpt", "small", 42, "lightning")


@pytest.fixture(scope="session")
def parity_weights(parity_small_ckpt) -> dict[str, torch.Tensor]:
    return encoder_weights(parity_small_ckpt)


@pytest.fixture(scope="session")
def lightning_small_ckpt(tmp_path_factory, parity_weights) -> Path:
    """An official-layout ATST-Clip small file as real training writes it: a Lightning run whose
    optimizer holds NumPy schedule values, with callback, loop and scheduler states; its teacher
    encoder carries the parity fixture's weights."""
    from tests.support.realistic_checkpoints import lightning_run_checkpoint

    return lightning_run_checkpoint(tmp_path_factory.mktemp("lightning_run"), parity_weights)


@pytest.fixture(scope="session")
def dino_small_ckpt(tmp_path_factory, parity_weights) -> Path:
    """The official DINO-style layout (like base.ckpt) with a real AdamW state holding NumPy values."""
    from tests.support.realistic_checkpoints import dino_style_checkpoint

    return dino_style_checkpoint(tmp_path_factory.mktemp("ckpt") / "dino_small.ckpt", parity_weights)


@pytest.fixture(scope="session")
def frame_small_ckpt(tmp_path_factory) -> Path:
    """The official ATST-Frame small layout (seed 43: the Frame parity weights)."""
    return frame_checkpoint(tmp_path_factory.mktemp("ckpt") / "frame_small_seed43.ckpt", "small", 43)


@pytest.fixture(scope="session")
def dino_base_ckpt(tmp_path_factory) -> Path:
    return official_checkpoint(tmp_path_factory.mktemp("ckpt") / "dino_base.ckpt", "base", 3, "dino")


@pytest.fixture(scope="session")
def frame_base_ckpt(tmp_path_factory) -> Path:
    """The official ATST-Frame base layout (726 MB without optimizer moments)."""
    return frame_checkpoint(tmp_path_factory.mktemp("ckpt") / "frame_base.ckpt", "base", 0)


@pytest.fixture(scope="session")
def sed_ckpt(tmp_path_factory, frame_small_ckpt) -> Path:
    """ATST-SED's fine-tuned layout (atst_as2M.ckpt): encoder.encoder.* + head.*, no config."""
    weights = encoder_weights(frame_small_ckpt)
    state = {"encoder.encoder." + k: v for k, v in weights.items()}
    state |= {"head.weight": torch.zeros(527, 384), "head.bias": torch.zeros(527)}
    path = tmp_path_factory.mktemp("ckpt") / "atst_as2M.ckpt"
    torch.save({"state_dict": state, "epoch": 9, "global_step": 72000}, path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", "tiny", seed=1)


@pytest.fixture(scope="session")
def tiny_frame_ckpt(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_frame.ckpt", "tiny", family="frame", seed=2)


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    """The HEAR model of the tiny checkpoint."""
    import atst_hear

    return atst_hear.load_model(str(tiny_ckpt))


@pytest.fixture(scope="module")
def tiny_frame_model(tiny_frame_ckpt):
    import atst_hear

    return atst_hear.load_model(str(tiny_frame_ckpt))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 generated clips (several rates, some stereo) and one file that is not audio: a
    pretraining collection as found, for the runs in folders and in shards."""
    from pretrain.training.synthetic import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_clips=24, seed=0)
    (root / "zz_corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    return root


@pytest.fixture(scope="session")
def probe_tasks(tmp_path_factory) -> list[Path]:
    """The four rendered-sound probe tasks (speech, speaker, instruments, drums), small: 4 / 2 / 3
    clips per label in train / valid / test. Needs Debian's espeak-ng, flite, fluidsynth and a GM
    soundfont, which scripts/setup_env.sh installs."""
    from pretrain.training.rendered_sound import make_probe_tasks

    return make_probe_tasks(tmp_path_factory.mktemp("probe_tasks"), per_class=(4, 2, 3))
