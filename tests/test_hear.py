"""The HEAR 2021 API module: shapes, options, timestamps, bad input, and the real validator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import atst_hear
from pretrain import AudioInputError, CheckpointError
from tests.support.numeric import noise, rel_err


def test_attributes(tiny_model):
    assert tiny_model.sample_rate == 16000
    assert isinstance(tiny_model, torch.nn.Module)
    assert (tiny_model.scene_embedding_size, tiny_model.timestamp_embedding_size) == (2 * 4 * 192, 4 * 192)


def test_sizes_of_official_small_and_base(lightning_small_ckpt, dino_base_ckpt):
    small = atst_hear.load_model(str(lightning_small_ckpt))
    base = atst_hear.load_model(str(dino_base_ckpt), n_blocks=1)
    assert (small.scene_embedding_size, small.timestamp_embedding_size) == (9216, 4608)
    assert (base.scene_embedding_size, base.timestamp_embedding_size) == (1536, 768)


def test_scene_embeddings_equal_parity_fixture(lightning_small_ckpt, parity_fixture):
    model = atst_hear.load_model(str(lightning_small_ckpt))
    emb = atst_hear.get_scene_embeddings(torch.from_numpy(parity_fixture["audio_3.3s"]), model)
    assert emb.dtype == torch.float32 and emb.shape == (2, 9216)
    assert rel_err(emb.numpy(), parity_fixture["scene12_3.3s"]) < 1e-4


def test_timestamp_embeddings_are_the_layers(lightning_small_ckpt, parity_fixture):
    """Token k of block b sits at [k, b*D:(b+1)*D]; CLS is excluded."""
    model = atst_hear.load_model(str(lightning_small_ckpt))
    emb, ts = atst_hear.get_timestamp_embeddings(torch.from_numpy(parity_fixture["audio_3.3s"]), model)
    layers = parity_fixture["layers_3.3s"][:, :, 1:]  # (12, 2, 82, 384)
    expected = np.transpose(layers, (1, 2, 0, 3)).reshape(2, 82, 12 * 384)
    assert rel_err(emb.numpy(), expected) < 1e-4
    assert ts.shape == (2, 82) and ts.dtype == torch.float32
    assert torch.allclose(ts[0], 15.0 + 40.0 * torch.arange(82, dtype=torch.float32))


@pytest.mark.parametrize("seconds", [0.05, 1.0, 6.0, 6.03, 13.7])
def test_timestamps_on_40ms_grid_within_clip(tiny_model, seconds):
    audio = noise(2, seconds)
    emb, ts = atst_hear.get_timestamp_embeddings(audio, tiny_model)
    n_tokens = (audio.shape[1] // 160 + 1) // 4
    assert emb.shape == (2, n_tokens, tiny_model.timestamp_embedding_size)
    assert torch.isfinite(emb).all()
    diffs = torch.diff(ts.double(), dim=1)
    assert n_tokens == 1 or torch.all((diffs - 40.0).abs() < 1e-3)
    assert float(ts.max()) <= 1000 * audio.shape[1] / 16000


def test_options_n_blocks_and_chunk_seconds(tiny_ckpt):
    audio = noise(1, 5.0, seed=3)
    full = atst_hear.load_model(str(tiny_ckpt))
    last2 = atst_hear.load_model(str(tiny_ckpt), n_blocks=2)
    e_full, e_last2 = atst_hear.get_scene_embeddings(audio, full), atst_hear.get_scene_embeddings(audio, last2)
    dim = 192
    assert e_last2.shape == (1, 2 * 2 * dim)
    # CLS parts of the last two blocks, then their means
    assert torch.allclose(e_last2[:, : 2 * dim], e_full[:, 2 * dim : 4 * dim], atol=1e-5)
    assert torch.allclose(e_last2[:, 2 * dim :], e_full[:, 6 * dim :], atol=1e-5)
    short_chunks = atst_hear.load_model(str(tiny_ckpt), chunk_seconds=2.0)
    assert short_chunks.extractor.scene_chunk_frames == 201 and short_chunks.extractor.chunk_tokens == 50
    assert not torch.allclose(atst_hear.get_scene_embeddings(audio, short_chunks), e_full)


def test_center_crop_option(tiny_ckpt):
    audio = noise(1, 14.0, seed=4)
    cropped = atst_hear.load_model(str(tiny_ckpt), center_crop_seconds=12)
    plain = atst_hear.load_model(str(tiny_ckpt))
    middle = audio[:, 16000 : 16000 + 12 * 16000]
    assert torch.allclose(
        atst_hear.get_scene_embeddings(audio, cropped), atst_hear.get_scene_embeddings(middle, plain), atol=1e-6
    )


def test_bfloat16_autocast_option_stays_within_1e2(lightning_small_ckpt, parity_fixture):
    """Autocast (here on the CPU; the same option serves GPUs) against the official float32 features."""
    model = atst_hear.load_model(str(lightning_small_ckpt), precision="bfloat16")
    audio = torch.from_numpy(parity_fixture["audio_8s"])
    emb = atst_hear.get_scene_embeddings(audio, model)
    assert emb.dtype == torch.float32
    assert 0 < rel_err(emb.numpy(), parity_fixture["scene12_8s"]) < 1e-2
    tokens, _ = atst_hear.get_timestamp_embeddings(torch.from_numpy(parity_fixture["audio_3.3s"]), model)
    expected = np.transpose(parity_fixture["layers_3.3s"][:, :, 1:], (1, 2, 0, 3)).reshape(2, 82, -1)
    assert tokens.dtype == torch.float32 and rel_err(tokens.numpy(), expected) < 1e-2


@pytest.mark.parametrize(
    "options,match",
    [
        ({"n_blocks": 0}, "n_blocks"),
        ({"n_blocks": 5}, "n_blocks"),
        ({"n_blocks": 2.0}, "n_blocks"),
        ({"chunk_seconds": 0.1}, "chunk_seconds"),
        ({"chunk_seconds": 11}, "chunk_seconds"),
        ({"center_crop_seconds": -1}, "center_crop_seconds"),
        ({"chunks_per_pass": 0}, "chunks_per_pass"),
        ({"precision": "int8"}, "precision"),
    ],
)
def test_bad_options(tiny_ckpt, options, match):
    with pytest.raises(ValueError, match=match):
        atst_hear.load_model(str(tiny_ckpt), **options)


def test_unknown_option_is_named(tiny_ckpt):
    with pytest.raises(TypeError, match="layers"):
        atst_hear.load_model(str(tiny_ckpt), layers=3)


def test_no_path_uses_environment_or_explains(tiny_ckpt, monkeypatch):
    monkeypatch.delenv("ATST_CHECKPOINT", raising=False)
    with pytest.raises(ValueError, match="ATST_CHECKPOINT"):
        atst_hear.load_model()
    monkeypatch.setenv("ATST_CHECKPOINT", str(tiny_ckpt))
    assert atst_hear.load_model().scene_embedding_size == 2 * 4 * 192


def test_bad_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        atst_hear.load_model(str(tmp_path / "missing.ckpt"))
    (tmp_path / "x.ckpt").write_text("hello")
    with pytest.raises(CheckpointError):
        atst_hear.load_model(str(tmp_path / "x.ckpt"))


BAD_AUDIO = {
    "1-D": (torch.zeros(16000), "2-D"),
    "3-D": (torch.zeros(1, 1, 16000), "2-D"),
    "int16": (torch.zeros(1, 16000, dtype=torch.int16), "floating point"),
    "NaN": (torch.full((2, 16000), float("nan")), "NaN or Inf"),
    "Inf": (torch.cat([torch.zeros(1, 16000), torch.full((1, 16000), float("inf"))]), "NaN or Inf"),
    "no sounds": (torch.zeros(0, 16000), "no sounds"),
    "no samples": (torch.zeros(2, 0), "at least 513"),
    "shorter than a token": (torch.zeros(2, 400), "at least 513"),
    "numpy": (np.zeros((1, 16000), dtype=np.float32), "torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
@pytest.mark.parametrize("function", ["get_scene_embeddings", "get_timestamp_embeddings"])
def test_bad_audio(tiny_model, case, function):
    audio, match = BAD_AUDIO[case]
    with pytest.raises(AudioInputError, match=match):
        getattr(atst_hear, function)(audio, tiny_model)


def test_float64_audio_gives_float32(tiny_model):
    audio = noise(2, 1.0).double()
    emb = atst_hear.get_scene_embeddings(audio, tiny_model)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb, atst_hear.get_scene_embeddings(audio.float(), tiny_model))


def test_wrong_model_object(tiny_model):
    with pytest.raises(TypeError, match="load_model"):
        atst_hear.get_scene_embeddings(noise(1, 1.0), torch.nn.Linear(2, 2))


def _validator(ckpt: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "hear-validator"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [str(exe), "atst_hear", "-m", str(ckpt), "-d", "cpu"], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    "layout", ["tiny_ckpt", "lightning_small_ckpt", "dino_base_ckpt", "frame_small_ckpt", "frame_base_ckpt", "sed_ckpt"]
)
def test_real_hear_validator(layout, request):
    result = _validator(request.getfixturevalue(layout))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Looks good!" in result.stdout


def test_real_hear_validator_reports_a_broken_checkpoint(tmp_path):
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    result = _validator(tmp_path / "broken.ckpt")
    assert result.returncode != 0
    assert "truncated or corrupt" in result.stderr
