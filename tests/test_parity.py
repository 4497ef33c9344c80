"""Features equal the official code's (tests/fixtures) and a plain re-statement of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain import ATSTFeatureExtractor, LogMelFrontEnd
from pretrain.model.frontend import mel_filterbank
from pretrain.reference import intermediate_layers_chunks, official_mel, pad_mels
from tests.support.numeric import rel_err
from tests.support.official_files import FIXTURES

TOL = 1e-4
# The fixtures' mels were computed once, on one CPU and torch build. The STFT's FFT kernels are
# chosen by CPU and torch version, so the same arithmetic differs here by a few float32 ulps of the
# [-1, 1] scale (measured: bit-exact on an AMD EPYC under torch 2.13; up to 1.07e-6 on an Intel Xeon
# with AVX-512, and 1 ulp under torch 2.4). torchaudio's transform run live on the same machine is
# compared on the harness stack (test_mel_equals_torchaudio_on_varied_inputs and below).
MEL_ABS_TOL = 2e-6


def mel_max_abs_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    assert tuple(ours.shape) == ref.shape, (tuple(ours.shape), ref.shape)
    return float(np.abs(ours.numpy() - ref).max())


@pytest.fixture(scope="module")
def small42(lightning_small_ckpt) -> ATSTFeatureExtractor:
    return ATSTFeatureExtractor.from_checkpoint(lightning_small_ckpt)


def test_mel_matches_fixture(parity_fixture):
    audio = torch.from_numpy(parity_fixture["audio_3.3s"])
    mels, lengths = LogMelFrontEnd().batch(list(audio))
    assert lengths.tolist() == [331, 331]
    assert mel_max_abs_err(mels[:, None], parity_fixture["mel_3.3s"]) <= MEL_ABS_TOL


@pytest.mark.parametrize("clip", ["2.5s", "7.3s"])
def test_mel_matches_frame_fixture(clip):
    data = np.load(FIXTURES / "public_parity_frame_small_seed43.npz")
    mels, _ = LogMelFrontEnd().batch(list(torch.from_numpy(data[f"audio_{clip}"])))
    assert mel_max_abs_err(mels[:, None], data[f"mel_{clip}"]) <= MEL_ABS_TOL


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


@pytest.mark.torchaudio
def test_mel_filterbank_equals_torchaudio_bit_for_bit():
    import torchaudio

    ref = torchaudio.functional.melscale_fbanks(513, 60.0, 7800.0, 64, 16000, norm=None, mel_scale="htk")
    ours = mel_filterbank()
    assert ours.dtype == ref.dtype and torch.equal(ours.view(torch.int32), ref.view(torch.int32))


def _signals() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    t = torch.arange(16000 * 3) / 16000
    return {
        "minimum length": 0.1 * torch.randn(513, generator=g),
        "odd length": 0.1 * torch.randn(16000 + 7, generator=g),
        "quiet noise": 1e-4 * torch.randn(16000 * 2, generator=g),
        "full-scale sine": torch.sin(2 * torch.pi * 440 * t),
        "clipped square": torch.sign(torch.sin(2 * torch.pi * 97 * t)),
        "full-scale noise": torch.rand(16000 * 2, generator=g) * 2 - 1,
        "silence": torch.zeros(16000),
        "one click in silence": torch.nn.functional.one_hot(torch.tensor(8000), 16000).float(),
        "dc offset": 0.5 + 0.01 * torch.randn(16000, generator=g),
        "61 s (11 STFT blocks)": 0.1 * torch.randn(16000 * 61 + 5, generator=g),
    }


@pytest.mark.torchaudio
@pytest.mark.parametrize("name", sorted(_signals()))
def test_mel_equals_torchaudio_on_varied_inputs(name):
    """Levels, silence, full scale, odd and long lengths: torchaudio's transform to float32 rounding."""
    wav = _signals()[name]
    ours = LogMelFrontEnd()(wav)
    ref = official_mel(wav)
    assert ours.shape == ref.shape == (64, wav.numel() // 160 + 1)
    assert float((ours - ref).abs().max()) <= 1e-6 * max(float(ref.abs().max()), 1.0)


@pytest.mark.torchaudio
def test_mel_matches_torchaudio_for_long_and_odd_lengths():
    """Block-wise STFT (6000-frame blocks) equals torchaudio's one-shot transform."""
    g = torch.Generator().manual_seed(0)
    frontend = LogMelFrontEnd()
    for n in (513, 800, 16000 * 3 + 17, 16000 * 61 + 5):
        wav = 0.1 * torch.randn(n, generator=g)
        ours = frontend(wav)
        assert ours.shape == (64, n // 160 + 1)
        assert rel_err(ours.numpy(), official_mel(wav).numpy()) < 1e-5


@pytest.mark.torchaudio
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
    mels, lengths = pad_mels([LogMelFrontEnd()(w) for w in wavs])  # bit-exact (test_mel_matches_fixture)
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
            assert rel_err(batch[i, : n_tokens[i]], alone[0]) < TOL
            assert torch.all(batch[i, n_tokens[i] :] == 0)


def test_layer_features_of_short_clip_equal_official_layers(small42):
    """Within one chunk, per-token features are the official get_intermediate_layers (no CLS)."""
    g = torch.Generator().manual_seed(5)
    wav = 0.1 * torch.randn(int(4.5 * 16000), generator=g)
    mels, lengths = pad_mels([LogMelFrontEnd()(wav)])
    from pretrain.reference import intermediate_layers

    with torch.no_grad():
        ref = torch.stack(intermediate_layers(small42.encoder, mels, lengths, 12))[:, :, 1:]
        ours, _ = small42.layer_features([wav], n_blocks=12)
    assert rel_err(ours.permute(2, 0, 1, 3), ref) < TOL  # ours (B, T, n, D), the official (n, B, T, D)
