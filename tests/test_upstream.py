"""The s3prl upstream expert: parity, the output-length contract, fine-tuning, hub registration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atst_upstream.expert import DOWNSAMPLE_RATE, UpstreamExpert
from atst_upstream.hubconf import atst, atst_clip, atst_frame, atst_local
from atst_upstream.run_downstream import register, s3prl_argv
from pretrain import AudioInputError
from tests.support.numeric import rel_err
from tests.support.official_files import FIXTURES


@pytest.fixture(scope="module", params=["clip", "frame"])
def tiny_expert(request):
    ckpt = request.getfixturevalue("tiny_ckpt" if request.param == "clip" else "tiny_frame_ckpt")
    return UpstreamExpert(str(ckpt)).eval()


def test_hidden_states_match_parity_fixture(lightning_small_ckpt, parity_fixture):
    expert = atst(str(lightning_small_ckpt)).eval()
    wavs = list(torch.from_numpy(parity_fixture["audio_3.3s"]))
    with torch.no_grad():
        hidden = expert(wavs)["hidden_states"]
    assert len(hidden) == 12 and all(h.shape == (2, 82, 384) for h in hidden)
    assert rel_err(torch.stack(hidden).numpy(), parity_fixture["layers_3.3s"][:, :, 1:]) < 1e-4
    assert expert.get_downsample_rates("hidden_states") == 640


def test_frame_hidden_states_match_parity_fixture(frame_small_ckpt):
    """ATST-Frame: the 12 norm_frame outputs of the official code (fixture), per layer (B, T, D)."""
    data = np.load(FIXTURES / "public_parity_frame_small_seed43.npz")
    expert = atst(str(frame_small_ckpt)).eval()
    with torch.no_grad():
        hidden = expert(list(torch.from_numpy(data["audio_2.5s"])))["hidden_states"]
    assert len(hidden) == 12 and all(h.shape == (2, 62, 384) for h in hidden)
    expected = data["tokens12_2.5s"].reshape(2, 62, 12, 384).transpose(2, 0, 1, 3)
    assert rel_err(torch.stack(hidden).numpy(), expected) < 1e-4


def test_family_aliases(tiny_ckpt, tiny_frame_ckpt):
    assert atst_frame(str(tiny_frame_ckpt)).extractor.family == "frame"
    assert atst_clip(str(tiny_ckpt)).extractor.family == "clip"
    with pytest.raises(ValueError, match="atst_frame needs an ATST-Frame checkpoint.*-u atst_clip"):
        atst_frame(str(tiny_ckpt))
    with pytest.raises(ValueError, match="atst_clip needs an ATST-Clip checkpoint"):
        atst_clip(str(tiny_frame_ckpt))


SECONDS = [0.1, 0.25, 0.5, 1.0, 1.37, 2.0, 3.9, 6.0, 6.04, 9.99, 10.01, 17.3, 30.0]


@pytest.mark.parametrize("seconds", SECONDS)
def test_output_length_contract(tiny_expert, seconds):
    """s3prl cuts each clip to round(len / 640) frames and needs the padded T within 4 of the
    longest clip's; the newer S3PRLUpstream expects ceil(len / 640)."""
    lengths = [int(seconds * 16000), int(seconds * 16000 * 0.6) + 600, 1000]
    wavs = [0.1 * torch.randn(n) for n in lengths]
    with torch.no_grad():
        hidden = tiny_expert(wavs)["hidden_states"]
    shapes = {tuple(h.shape) for h in hidden}
    assert len(shapes) == 1 and len(hidden) == 4
    batch, frames, dim = shapes.pop()
    assert (batch, dim) == (3, 192)
    assert abs(frames - round(max(lengths) / DOWNSAMPLE_RATE)) <= 1
    for n in lengths:
        tokens = (n // 160 + 1) // 4
        assert abs(tokens - round(n / DOWNSAMPLE_RATE)) <= 1
        assert abs(tokens - math.ceil(n / DOWNSAMPLE_RATE)) <= 1


def test_each_clip_as_if_alone(tiny_expert):
    wavs = [0.1 * torch.randn(n) for n in (16000 * 8, 5000, 16000 * 2)]
    with torch.no_grad():
        batch = tiny_expert(wavs)["hidden_states"]
        for i, w in enumerate(wavs):
            alone = tiny_expert([w])["hidden_states"]
            n = alone[0].shape[1]
            for b, a in zip(batch, alone, strict=True):
                assert rel_err(b[i, :n], a[0]) < 1e-4


def test_trainable_gradients_reach_the_encoder(tiny_ckpt):
    expert = atst_local(str(tiny_ckpt)).train()
    wavs = [0.1 * torch.randn(n) for n in (16000 * 7, 9000)]
    hidden = expert(wavs)["hidden_states"]
    torch.stack(hidden).pow(2).mean().backward()
    encoder = expert.extractor.encoder
    for p in (encoder.patch_embed.patch_embed.weight, encoder.blocks[0].attn.qkv.weight, encoder.pos_embed):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_needs_a_checkpoint():
    with pytest.raises(ValueError, match="-k"):
        atst()


def test_bad_waveforms(tiny_expert):
    with pytest.raises(AudioInputError, match="1-D"):
        tiny_expert([torch.zeros(2, 16000)])
    with pytest.raises(AudioInputError, match="NaN"):
        tiny_expert([torch.full((16000,), float("nan"))])
    with pytest.raises(AudioInputError, match="at least 513"):
        tiny_expert([torch.zeros(16000), torch.zeros(100)])


@pytest.mark.s3prl
def test_hub_registration_makes_atst_resolvable(tiny_ckpt):
    from s3prl import hub

    assert register(hub) == ["atst", "atst_clip", "atst_frame", "atst_local"]
    assert "atst" in hub.options() and "atst" in dir(hub)
    model = hub.atst(ckpt=str(tiny_ckpt), model_config=None, refresh=False)
    assert isinstance(model, UpstreamExpert)


def test_launcher_arguments():
    import atst_upstream.run_downstream as launcher

    device = [] if torch.cuda.is_available() else ["--device", "cpu"]
    argv = s3prl_argv(["-m", "train", "-u", "atst", "-d", "voxceleb1", "-n", "x"])
    assert argv == [
        "-m",
        "train",
        "-u",
        "atst",
        "-d",
        "voxceleb1",
        "-n",
        "x",
        "-c",
        str(launcher.CONFIG_DIR / "voxceleb1" / "config.yaml"),
        *device,
    ]
    assert "-c" not in s3prl_argv(["-m", "evaluate", "-e", "x.ckpt"])
    assert s3prl_argv(["-d", "speech_commands", "-c", "my.yaml", "--device", "cuda:1"]).count("-c") == 1
    assert s3prl_argv(["-d", "speech_commands", "-c", "my.yaml", "--device", "cuda:1"])[-1] == "cuda:1"
    assert "-c" not in s3prl_argv(["-d", "asr", "-n", "x"])  # no packaged config: s3prl's default applies
