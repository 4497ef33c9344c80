"""ATST-Frame: parity with the official code's fixture, the official functions reproduced on the
official path, and this package's own protocol with its documented invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import atst_hear
from pretrain import ATSTFeatureExtractor, LogMelFrontEnd
from pretrain.reference import (
    frame_linear_eval,
    frame_official_scene_embedding,
    frame_official_timestamp_embedding,
    pad_mels,
)
from tests.support.numeric import noise, rel_err
from tests.support.official_files import FIXTURES

TOL = 1e-4
D = 384


@pytest.fixture(scope="module")
def frame_fixture() -> dict[str, np.ndarray]:
    data = np.load(FIXTURES / "public_parity_frame_small_seed43.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def frame43(frame_small_ckpt) -> ATSTFeatureExtractor:
    return ATSTFeatureExtractor.from_checkpoint(frame_small_ckpt)


@pytest.fixture(scope="module")
def frame_hear(frame_small_ckpt):
    return atst_hear.load_model(str(frame_small_ckpt))


def audio_of(frame_fixture, clip: str) -> torch.Tensor:
    if clip == "10.02s":
        return torch.from_numpy(frame_fixture["audio_23.7s"][:, :160320])
    return torch.from_numpy(frame_fixture[f"audio_{clip}"])


def official_mel4d(audio: torch.Tensor) -> torch.Tensor:
    """The whole clip's mel, as embedding.py computes it (our front end: bit-exact on the fixtures)."""
    mels, _ = LogMelFrontEnd().batch(list(audio))
    return mels[:, None]


# --- the official functions, on the official chunks --------------------------------------------


def test_layers_match_fixture(frame_fixture, frame43):
    audio = audio_of(frame_fixture, "2.5s")
    expected = frame_fixture["tokens12_2.5s"].reshape(2, 62, 12, D).transpose(2, 0, 1, 3)
    with torch.no_grad():
        mels, lengths = frame43.mels(list(audio))
        layers = frame43.encoder.forward_blocks(mels, lengths // 4)
    assert layers.shape == (12, 2, 62, D)  # no CLS token
    assert rel_err(layers.numpy(), expected) < TOL


@pytest.mark.parametrize("clip", ["2.5s", "7.3s", "23.7s", "10.02s"])
def test_official_scene_function_reproduced_on_official_chunks(frame_fixture, frame43, clip):
    """embedding.get_scene_embedding on our encoder: 1001-frame chunks, equal weights, zero tail vectors."""
    with torch.no_grad():
        ours = frame_official_scene_embedding(frame43.encoder, official_mel4d(audio_of(frame_fixture, clip)))
    assert rel_err(ours.numpy(), frame_fixture[f"scene12_{clip}"]) < TOL


@pytest.mark.parametrize("clip", ["2.5s", "7.3s", "23.7s"])
def test_official_timestamp_function_reproduced_on_official_chunks(frame_fixture, frame43, clip):
    with torch.no_grad():
        mel4d = official_mel4d(audio_of(frame_fixture, clip))
        tokens12, timestamps = frame_official_timestamp_embedding(frame43.encoder, mel4d, 12)
        tokens1, _ = frame_official_timestamp_embedding(frame43.encoder, mel4d, 1)
    assert torch.equal(timestamps, torch.from_numpy(frame_fixture[f"timestamps_{clip}"]))
    if clip == "2.5s":
        assert rel_err(tokens12.numpy(), frame_fixture["tokens12_2.5s"]) < TOL
        return
    assert rel_err(tokens1.numpy(), frame_fixture[f"tokens1_{clip}"]) < TOL
    idx = torch.from_numpy(frame_fixture[f"token_idx_{clip}"])
    assert rel_err(tokens12[:, idx].numpy(), frame_fixture[f"tokens12_at_{clip}"]) < TOL


# --- this package's protocol -------------------------------------------------------------------


def test_hear_attributes_and_sizes(frame_hear, frame_small_ckpt):
    assert frame_hear.family == "frame" and frame_hear.sample_rate == 16000
    assert (frame_hear.scene_embedding_size, frame_hear.timestamp_embedding_size) == (12 * D, 12 * D)
    last = atst_hear.load_model(str(frame_small_ckpt), n_blocks=1)
    assert (last.scene_embedding_size, last.timestamp_embedding_size) == (D, D)
    assert frame_hear.extractor.scene_chunk_frames == 1001 and frame_hear.extractor.chunk_tokens == 250


@pytest.mark.parametrize("clip", ["2.5s", "7.3s"])
def test_single_chunk_clips_equal_the_fixture(frame_fixture, frame_hear, clip):
    """Within one chunk the package's protocol and the official functions agree, except for the
    timestamps: token centres here, token starts there (15 ms apart)."""
    audio = audio_of(frame_fixture, clip)
    emb, ts = atst_hear.get_timestamp_embeddings(audio, frame_hear)
    if clip == "2.5s":
        assert rel_err(emb.numpy(), frame_fixture["tokens12_2.5s"]) < TOL
    else:
        assert rel_err(emb[..., -D:].numpy(), frame_fixture["tokens1_7.3s"]) < TOL
    assert torch.equal(ts, torch.from_numpy(frame_fixture[f"timestamps_{clip}"]) + 15.0)
    scene = atst_hear.get_scene_embeddings(audio, frame_hear)
    assert rel_err(scene.numpy(), frame_fixture[f"scene12_{clip}"]) < TOL


def test_long_clip_tokens_on_the_drift_free_grid(frame_fixture, frame43, frame_hear):
    """23.7 s: the official chunks of 1001 frames drop a frame each, so its tokens 250.. start 10 ms
    (then 20 ms) later than their timestamps say. Here chunks are 250 tokens = 1000 frames: token k
    covers frames 4k .. 4k+3, timestamps are exactly 15 + 40 k ms, and the first chunk is identical."""
    audio = audio_of(frame_fixture, "23.7s")
    emb, ts = atst_hear.get_timestamp_embeddings(audio, frame_hear)
    assert emb.shape == (1, 592, 12 * D)  # 2371 frames -> 592 tokens, as the official
    assert torch.equal(ts[0].double(), 15.0 + 40.0 * torch.arange(592, dtype=torch.float64))
    assert float(ts.max()) <= 1000 * audio.shape[1] / 16000
    idx = torch.from_numpy(frame_fixture["token_idx_23.7s"])
    first = idx[idx < 250]
    assert rel_err(emb[:, first].numpy(), frame_fixture["tokens12_at_23.7s"][:, : len(first)]) < TOL
    # tokens 250..499 are the encoder run on frames 1000..1999 (the official runs it on 1001..2001)
    mel4d = official_mel4d(audio)
    with torch.no_grad():
        grid, _ = frame_official_timestamp_embedding(frame43.encoder, mel4d[..., 1000:2000], 12)
    assert rel_err(emb[:, 250:500].numpy(), grid.numpy()) < TOL
    assert rel_err(emb[:, 250:500, -D:].numpy(), frame_fixture["tokens1_23.7s"][:, 250:500]) > 1e-2


@pytest.mark.parametrize("clip", ["2.5s", "7.3s", "23.7s", "10.02s"])
def test_scene_is_the_official_linear_evaluation(frame_fixture, frame43, frame_hear, clip):
    """The HEAR scene embedding is atstframe/downstream's linear-evaluation feature: 1001-frame chunks,
    a later chunk counts only if more than half of it is clip, means over the clip's own tokens."""
    audio = audio_of(frame_fixture, clip)
    with torch.no_grad():
        frames = torch.tensor([audio.shape[1] // 160 + 1])
        expected = frame_linear_eval(frame43.encoder, official_mel4d(audio), frames, 12)
    assert rel_err(atst_hear.get_scene_embeddings(audio, frame_hear).numpy(), expected.numpy()) < TOL


def test_ten_seconds_and_a_bit_keeps_its_scene_embedding(frame_fixture, frame_hear):
    """A 10.02 s clip: its 2-frame tail is a zero vector averaged in by embedding.py (the fixture is
    half the clip's first-chunk vector); here the tail does not count, so the embedding stays close to
    that of the clip's first 10 s."""
    audio = audio_of(frame_fixture, "10.02s")
    ours = atst_hear.get_scene_embeddings(audio, frame_hear)
    first_ten = atst_hear.get_scene_embeddings(audio[:, :160000], frame_hear)
    assert rel_err(ours.numpy(), first_ten.numpy()) < 1e-2
    official = torch.from_numpy(frame_fixture["scene12_10.02s"])
    assert rel_err(official.numpy(), (ours / 2).numpy()) < 1e-2  # the zero vector halves it


def test_padded_batch_equals_clips_alone(frame_hear):
    """hear-eval-kit pads clips with silence; per-clip features keep their own lengths."""
    g = torch.Generator().manual_seed(4)
    wavs = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (14.3, 2.2, 0.7)]
    with torch.no_grad():
        layers, n_tokens = frame_hear.extractor.layer_features(wavs, n_blocks=12)
        for i, w in enumerate(wavs):
            alone, _ = frame_hear.extractor.layer_features([w], n_blocks=12)
            assert rel_err(layers[i, : n_tokens[i]], alone[0]) < TOL


def test_mixed_batch_scene_equals_linear_evaluation(frame43):
    g = torch.Generator().manual_seed(2)
    wavs = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (25.3, 3.0, 13.1, 9.0, 15.02)]
    mels, lengths = pad_mels([LogMelFrontEnd()(w) for w in wavs])
    with torch.no_grad():
        expected = frame_linear_eval(frame43.encoder, mels, lengths, 4)
        ours = frame43.scene_embeddings(wavs, n_blocks=4)
    assert ours.shape == (5, 4 * D)
    assert rel_err(ours.numpy(), expected.numpy()) < TOL


def test_bfloat16_within_1e2(frame_fixture, frame_small_ckpt):
    model = atst_hear.load_model(str(frame_small_ckpt), precision="bfloat16")
    emb = atst_hear.get_scene_embeddings(audio_of(frame_fixture, "7.3s"), model)
    assert emb.dtype == torch.float32 and 0 < rel_err(emb.numpy(), frame_fixture["scene12_7.3s"]) < 1e-2


@pytest.mark.parametrize("seconds", [0.05, 1.0, 10.0, 10.03, 31.0])
def test_odd_lengths(tiny_frame_model, seconds):
    audio = noise(2, seconds)
    scene = atst_hear.get_scene_embeddings(audio, tiny_frame_model)
    emb, ts = atst_hear.get_timestamp_embeddings(audio, tiny_frame_model)
    n_tokens = (audio.shape[1] // 160 + 1) // 4
    assert scene.shape == (2, 4 * 192) and torch.isfinite(scene).all()
    assert emb.shape == (2, n_tokens, 4 * 192) and torch.isfinite(emb).all()
    assert ts.shape == (2, n_tokens) and float(ts[0, -1]) <= 1000 * seconds
