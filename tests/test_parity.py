"""Features equal the official code's (shared fixture) and a plain re-statement of it."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err
from reference_official import intermediate_layers_chunks, official_mel, pad_mels

from pretrain import ATSTFeatureExtractor, LogMelFrontEnd

TOL = 1e-4


@pytest.fixture(scope="module")
def small42(lightning_small_ckpt) -> ATSTFeatureExtractor:
    return ATSTFeatureExtractor.from_checkpoint(lightning_small_ckpt)


def test_mel_matches_fixture(parity_fixture):
    audio = torch.from_numpy(parity_fixture["audio_3.3s"])
    mels, lengths = LogMelFrontEnd().batch(list(audio))
    assert lengths.tolist() == [331, 331]
    assert rel_err(mels[:, None].numpy(), parity_fixture["mel_3.3s"]) < TOL


def test_layers_match_fixture(parity_fixture, small42):
    audio = torch.from_numpy(parity_fixture["audio_3.3s"])
    with torch.no_grad():
        mels, lengths = small42.mels(list(audio))
        layers = small42.encoder.forward_blocks(mels, lengths // 4, n_last=12)
    assert rel_err(layers.numpy(), parity_fixture["layers_3.3s"]) < TOL


@pytest.mark.parametrize("clip", ["3.3s", "8s"])
def test_scene_embedding_matches_fixture(parity_fixture, small42, clip):
    audio = torch.from_numpy(parity_fixture[f"audio_{clip}"])
    with torch.no_grad():
        emb = small42.scene_embeddings(list(audio), n_blocks=12)
    assert emb.shape == (audio.shape[0], 9216)
    assert rel_err(emb.numpy(), parity_fixture[f"scene12_{clip}"]) < TOL


def test_mel_matches_torchaudio_for_long_and_odd_lengths():
    """Block-wise STFT (6000-frame blocks) equals torchaudio's one-shot transform."""
    g = torch.Generator().manual_seed(0)
    frontend = LogMelFrontEnd()
    for n in (513, 800, 16000 * 3 + 17, 16000 * 61 + 5):
        wav = 0.1 * torch.randn(n, generator=g)
        ours = frontend(wav)
        assert ours.shape == (64, n // 160 + 1)
        assert rel_err(ours.numpy(), official_mel(wav).numpy()) < 1e-5


def test_top_db_floor_is_per_clip():
    """A quiet clip beside a loud one keeps its own floor (the official per-clip behaviour)."""
    g = torch.Generator().manual_seed(1)
    loud, quiet = torch.randn(16000, generator=g), 1e-4 * torch.randn(16000, generator=g)
    mels, _ = LogMelFrontEnd().batch([loud, quiet])
    assert rel_err(mels[1].numpy(), official_mel(quiet).numpy()) < 1e-5


@pytest.mark.parametrize("n_blocks", [12, 3])
def test_multi_chunk_mixed_batch_matches_official_protocol(small42, n_blocks):
    """Clips of 25.3, 3, 13.1, 9 and 12.02 s in one batch: chunk counting and the mean quirk."""
    g = torch.Generator().manual_seed(2)
    wavs = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (25.3, 3.0, 13.1, 9.0, 12.02)]
    mels, lengths = pad_mels([official_mel(w) for w in wavs])
    with torch.no_grad():
        ref = intermediate_layers_chunks(small42.encoder, mels, lengths, n_blocks, 601)
        ours = small42.scene_embeddings(wavs, n_blocks=n_blocks)
    assert rel_err(ours.numpy(), ref.numpy()) < TOL


def test_chunks_per_pass_does_not_change_results(lightning_small_ckpt):
    g = torch.Generator().manual_seed(3)
    wavs = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (31.0, 7.5)]
    with torch.no_grad():
        one = ATSTFeatureExtractor.from_checkpoint(lightning_small_ckpt, chunks_per_pass=1)
        many = ATSTFeatureExtractor.from_checkpoint(lightning_small_ckpt, chunks_per_pass=64)
        assert rel_err(one.scene_embeddings(wavs, n_blocks=12), many.scene_embeddings(wavs, n_blocks=12)) < 1e-5
        a, _ = one.layer_features(wavs, n_blocks=12)
        b, _ = many.layer_features(wavs, n_blocks=12)
    assert rel_err(a, b) < 1e-5


def test_layer_features_per_clip_equal_clip_alone(small42):
    """Padding in the mel domain and masking keys: a clip's features don't depend on its batch."""
    g = torch.Generator().manual_seed(4)
    wavs = [0.1 * torch.randn(int(s * 16000), generator=g) for s in (14.3, 2.2, 0.7)]
    with torch.no_grad():
        batch, n_tokens = small42.layer_features(wavs, n_blocks=12)
        assert n_tokens.tolist() == [(len(w) // 160 + 1) // 4 for w in wavs]
        for i, w in enumerate(wavs):
            alone, _ = small42.layer_features([w], n_blocks=12)
            assert rel_err(batch[:, i, : n_tokens[i]], alone[:, 0]) < TOL
            assert torch.all(batch[:, i, n_tokens[i] :] == 0)


def test_layer_features_of_short_clip_equal_official_layers(small42):
    """Within one chunk, per-token features are the official get_intermediate_layers (no CLS)."""
    g = torch.Generator().manual_seed(5)
    wav = 0.1 * torch.randn(int(4.5 * 16000), generator=g)
    mels, lengths = pad_mels([official_mel(wav)])
    from reference_official import intermediate_layers

    with torch.no_grad():
        ref = torch.stack(intermediate_layers(small42.encoder, mels, lengths, 12))[:, :, 1:]
        ours, _ = small42.layer_features([wav], n_blocks=12)
    assert rel_err(ours, ref) < TOL
