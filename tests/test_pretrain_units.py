"""Pretraining parts on their own: schedules, augmentations, sample order, data, config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from pretrain.model.encoder import ATSTEncoder
from pretrain.training import config as run_config
from pretrain.training.augment import LOG_EPS, LogMixupExp, RandomResizeCrop
from pretrain.training.data import StepSampler, TwoCropDataset, collate_crops, list_audio, read_crops, scan_dataset
from pretrain.training.schedules import cosine_schedule
from pretrain.training.teacher_student import TeacherStudent


def official_schedule(base, final, max_steps, warmup_steps=0, start_warmup_value=0.0):
    """The official precomputed array (audiossl cosine_scheduler_step), restated with numpy."""
    warmup = np.linspace(start_warmup_value, base, warmup_steps) if warmup_steps > 0 else np.array([])
    iters = np.arange(max_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, cosine))


@pytest.mark.parametrize("base,final,total,warmup", [(5e-4, 1e-6, 39100, 1300), (0.04, 0.4, 500, 0), (0.99, 1, 97, 0)])
def test_schedule_equals_official_array(base, final, total, warmup):
    ref = official_schedule(base, final, total, warmup)
    for step in [0, 1, warmup // 2, max(warmup - 1, 0), warmup, warmup + 1, total // 2, total - 1]:
        assert cosine_schedule(step, base=base, final=final, total_steps=total, warmup_steps=warmup) == pytest.approx(
            ref[step], rel=1e-12, abs=1e-15
        )
    assert cosine_schedule(total + 10, base=base, final=final, total_steps=total, warmup_steps=warmup) == ref[-1]


def test_schedule_rejects_warmup_longer_than_run():
    with pytest.raises(ValueError, match="warmup"):
        cosine_schedule(0, base=1, final=0, total_steps=10, warmup_steps=10)


def test_mixup_formula_and_memory_bank():
    g = torch.Generator().manual_seed(0)
    mix = LogMixupExp(ratio=0.4, memory=3)
    first = torch.randn(2, 4, 5)
    assert torch.equal(mix(first, g), first)  # empty bank: unchanged
    second = torch.randn(2, 4, 5)
    g_copy = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g_copy)  # the first call's alpha draw
    alpha = 0.4 * torch.rand(2, generator=g_copy)
    pick = torch.randint(2, (2,), generator=g_copy)
    out = mix(second, g)
    z = first[pick]
    a = alpha.view(-1, 1, 1)
    assert torch.allclose(out, torch.log((1 - a) * second.exp() + a * z.exp() + LOG_EPS), atol=1e-6)
    assert mix.filled == 3 and mix.position == 1  # FIFO of 3: the oldest item was overwritten
    assert torch.equal(mix.bank[0], second[1]) and torch.equal(mix.bank[1], first[1])


def test_random_resize_crop_matches_official_inside_the_crop():
    """For a crop inside the input, the batched resampling equals cutting out + bicubic interpolate
    (align_corners=True) away from the crop border, where the official code repeats border pixels."""
    x = torch.randn(1, 64, 101)
    top, left, h, w = 5, 20, 40, 60
    official = F.interpolate(
        x[:, None, top : top + h, left : left + w], size=(64, 101), mode="bicubic", align_corners=True
    )[0, 0]
    rrc = RandomResizeCrop()
    rrc.crop_boxes = lambda *args: torch.tensor([[top, left, h, w]], dtype=torch.float64)
    ours = rrc(x, torch.Generator())[0]
    assert torch.allclose(ours[4:-4, 4:-4], official[4:-4, 4:-4], atol=1e-4)


def test_random_resize_crop_sampling_ranges():
    rrc = RandomResizeCrop()
    boxes = rrc.crop_boxes(2000, 64, 601, torch.Generator().manual_seed(1))
    top, left, h, w = boxes.unbind(1)
    canvas_w = int(601 * 1.5)
    assert h.min() >= int(0.6 * 64) and h.max() <= 64  # clipped to the canvas height
    assert w.min() >= int(0.6 * 601) and w.max() <= canvas_w
    offset_x = (canvas_w - 601) // 2
    assert (left + offset_x).min() >= 0 and (left + offset_x + w).max() <= canvas_w
    assert (top >= 0).all() and (top + h <= 64).all()


def test_step_sampler_is_resumable_and_splits_ranks():
    full = list(StepSampler(10, 4, seed=3, end_batch=7))
    resumed = list(StepSampler(10, 4, seed=3, start_batch=4, end_batch=7))
    assert resumed == full[4:]
    ranks = [list(StepSampler(10, 2, seed=3, rank=r, world=2, end_batch=7)) for r in range(2)]
    for k in range(7):
        assert [s.index for s in ranks[0][k] + ranks[1][k]] == [s.index for s in full[k]]
    # every epoch is a permutation: 10 items, 4 per batch -> positions 0..9 cover each file once
    positions = [s.index for batch in full for s in batch][:10]
    assert sorted(positions) == list(range(10))


def test_two_crops_resample_pad_and_skip(tmp_path):
    rate = 44100
    stereo = np.stack([np.sin(np.arange(rate * 3) / 10), np.zeros(rate * 3)], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", stereo, rate)
    soundfile.write(tmp_path / "short.flac", np.ones(8000, dtype=np.float32) * 0.1, 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    files = list_audio(tmp_path)
    assert [f.name for f in files] == ["a.wav", "broken.wav", "short.flac"]
    ds = TwoCropDataset(files, train_len=2.0)
    from pretrain.training.data import SampleKey

    crops, _ = ds[SampleKey(0, 1)]
    assert crops.shape == (2, 32000) and crops.dtype == torch.float32
    assert 0.3 < float(crops.abs().max()) < 0.55  # mono mix of the two channels: half amplitude
    short, _ = ds[SampleKey(2, 1)]
    assert torch.all(short[:, 8000:] == 0) and torch.allclose(short[:, :8000], torch.tensor(0.1), atol=1e-3)
    batch = collate_crops([ds[SampleKey(i, i)] for i in range(3)])
    assert batch["wavs"].shape == (2, 2, 32000) and batch["skipped"] == [str(files[1])]
    assert read_crops(files[2], 100, n_crops=3, seed=5).shape == (3, 100)


def test_manifest_and_scan(tmp_path):
    soundfile.write(tmp_path / "x.wav", 0.1 * np.ones(16000, dtype=np.float32), 16000)
    soundfile.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 22050)
    (tmp_path / "bad.ogg").write_bytes(b"OggS not really")
    (tmp_path / "list.tsv").write_text("path\tduration\nx.wav\t1.0\nsilent.wav\t0.7\nbad.ogg\t1\n")
    assert [p.name for p in list_audio(tmp_path / "list.tsv")] == ["x.wav", "silent.wav", "bad.ogg"]
    report = scan_dataset(tmp_path / "list.tsv", train_len=6.0, progress=False)
    assert (report.files, report.readable, report.silent, report.shorter_than_crop) == (3, 2, 1, 2)
    assert report.sample_rates == {16000: 1, 22050: 1} and "bad.ogg" in report.problems[0]


def test_teacher_ema_update():
    torch.manual_seed(0)
    model = TeacherStudent(ATSTEncoder(embed_dim=64, depth=1))
    assert all(
        torch.equal(t, s)
        for t, s in zip(model.teacher.encoder.parameters(), model.student.encoder.parameters(), strict=True)
    )
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.projector.parameters()]
    model.update_teacher(0.9)
    for b, t, s in zip(before, model.teacher.projector.parameters(), model.student.projector.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_config_preset_yaml_and_flags(tmp_path):
    (tmp_path / "run.yaml").write_text("batch_size: 8\ntime_scale: [0.5, 1.2]\n")
    parser = argparse.ArgumentParser()
    run_config.add_arguments(parser)
    args = parser.parse_args(
        [
            "--preset",
            "base",
            "--config",
            str(tmp_path / "run.yaml"),
            "--max-steps",
            "400000",
            "--log-data-order",
            "true",
        ]
    )
    config = run_config.from_arguments(args)
    assert (config.arch, config.base_lr, config.ema, config.batch_size) == ("base", 2e-4, 0.9995, 8)
    assert config.time_scale == (0.5, 1.2) and config.max_steps == 400000 and config.log_data_order is True
    (tmp_path / "bad.yaml").write_text("batchsize: 8\n")
    with pytest.raises(ValueError, match="batchsize"):
        run_config.from_arguments(parser.parse_args(["--config", str(tmp_path / "bad.yaml")]))
    with pytest.raises(ValueError, match="warmup"):
        run_config.from_arguments(parser.parse_args(["--max-steps", "100"]))
