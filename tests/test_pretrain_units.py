"""Pretraining parts on their own: schedules, augmentations, sample order, data, config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from pretrain.model.encoder import ATSTEncoder
from pretrain.runs.augment import LOG_EPS, LogMixupExp, RandomResizeCrop
from pretrain.runs.schedules import cosine_schedule
from pretrain.training import config as run_config
from pretrain.training.data import CropDataset, StepSampler, collate_crops, list_audio, read_crops, scan_dataset
from pretrain.training.recipes import RECIPES
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
    ds = CropDataset(files, crop_seconds=2.0)
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
    report = scan_dataset(tmp_path / "list.tsv", crop_seconds=6.0, progress=False)
    assert (report.files, report.readable, report.silent, report.shorter_than_crop) == (3, 2, 1, 2)
    assert report.sample_rates == {16000: 1, 22050: 1} and "bad.ogg" in report.problems[0]


def test_teacher_ema_update():
    torch.manual_seed(0)
    model = TeacherStudent(ATSTEncoder(embed_dim=64, depth=1), RECIPES["clip"])
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


# --- ATST-Frame: masking, views, loss, schedules ---------------------------------------------------


def _mask_statistics(masks: np.ndarray) -> dict[str, float]:
    runs = []
    for row in masks:
        edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    return {
        "fraction": float(masks.mean()),
        "shortest run": float(min(runs)),
        "mean run": float(np.mean(runs)),
        "last token": float(masks[:, -1].mean()),
        "first token": float(masks[:, 0].mean()),
    }


def test_span_masks_match_the_official_sampler_statistically():
    """Over 4000 clips of 250 tokens: the realised fraction (about 0.5, not 0.65), span runs of at
    least 5, the never-masked last token and the first token's rate all agree with fairseq's
    compute_mask_indices as the official recipe calls it."""
    from pretrain.reference import official_span_mask
    from pretrain.training.recipes.frame import span_masks

    g = torch.Generator().manual_seed(0)
    ours = span_masks(4000, 250, mask_prob=0.65, mask_span=5, min_spans=2, generator=g).numpy()
    rng = np.random.default_rng(0)
    official = np.stack([official_span_mask(250, rng=rng) for _ in range(4000)])
    a, b = _mask_statistics(ours), _mask_statistics(official)
    assert a["shortest run"] == b["shortest run"] == 5
    assert a["last token"] == b["last token"] == 0  # starts < n - 5: the last token is never masked
    assert abs(a["fraction"] - b["fraction"]) < 0.005 and 0.45 < a["fraction"] < 0.55
    assert abs(a["mean run"] - b["mean run"]) < 0.3
    assert abs(a["first token"] - b["first token"]) < 0.03
    spans = span_masks(500, 20, mask_prob=0.05, mask_span=5, min_spans=2, generator=g)
    assert int(spans.sum(1).min()) >= 5  # min_spans = 2 spans may overlap but cover at least one span


def test_frame_views_keep_the_time_axis_and_share_one_mask():
    from pretrain.training.config import PRESETS, PretrainConfig
    from pretrain.training.recipes.frame import FrameViews

    views = FrameViews(PretrainConfig(**PRESETS["frame-tiny"]))
    # frames stay aligned: changing input frame t changes output frame t only, for every crop drawn
    x = torch.randn(64, 64, 401)
    changed = x.clone()
    changed[:, :, 123] += 3.0
    y = views.crop(x, torch.Generator().manual_seed(5))
    y_changed = views.crop(changed, torch.Generator().manual_seed(5))
    moved = (y_changed - y).abs().amax(dim=(0, 1)) > 0
    assert moved.nonzero().flatten().tolist() == [123]
    # the chain: the teacher-side view is the mel itself, the other one is augmented, one mask per clip
    g = torch.Generator().manual_seed(0)
    mels = torch.randn(3, 1, 64, 401)
    for _ in range(2):  # the second call mixes with the bank
        mel, augmented, masks = views(mels, g)
    assert torch.equal(mel, mels[:, 0]) and not torch.allclose(augmented, mel)
    assert masks.shape == (3, 100) and masks.dtype == torch.bool


def test_frame_loss_reads_masked_tokens_only_and_the_teacher_sees_unmasked_input():
    from pretrain.training.recipes.frame import span_masks
    from pretrain.training.teacher_student import TeacherStudent

    torch.manual_seed(0)
    encoder = ATSTEncoder(family="frame", embed_dim=64, depth=2, num_heads=2)
    model = TeacherStudent(encoder, RECIPES["frame"]).eval()
    view_a, view_b = torch.randn(4, 64, 200), torch.randn(4, 64, 200)
    masks = span_masks(4, 50, mask_prob=0.65, mask_span=5, min_spans=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(view_a, view_b, masks)[0]
        # 1. the encoder outputs at unmasked tokens do not reach the loss: perturb them hard
        handle = model.student.encoder.final_norm.register_forward_hook(
            lambda module, args, out: out + 100.0 * (~torch.cat([masks, masks]))[..., None]
        )
        perturbed = model(view_a, view_b, masks)[0]
        handle.remove()
        assert torch.equal(loss, perturbed)
        # 2. frames of masked tokens: replaced by mask_embed for the student, seen by the teacher
        frames = masks.repeat_interleave(4, dim=1)[:, None, :].expand(-1, 64, -1)
        changed = torch.where(frames, view_a + 5.0, view_a)
        both, both_changed = torch.cat([view_a, view_b]), torch.cat([changed, view_b])
        m2 = torch.cat([masks, masks])
        student, teacher = model.student, model.teacher
        assert torch.equal(student(both, m2, masked_input=True), student(both_changed, m2, masked_input=True))
        assert not torch.allclose(teacher(both, m2, masked_input=False), teacher(both_changed, m2, masked_input=False))


def test_frame_presets_reproduce_the_official_settings_and_schedules():
    """atstframe/train_small.sh and train_base.sh, and the official NumPy schedules at chosen steps."""
    from pretrain.training.config import PRESETS, PretrainConfig
    from pretrain.training.lightning_module import ATSTPretraining

    official = {
        "frame-small": {"batch": 256, "nproc": 4, "lr": 4e-4, "warmup": 1950, "steps": 58500, "ema": 0.997},
        "frame-base": {"batch": 144, "nproc": 7, "lr": 8e-5, "warmup": 19900, "steps": 398000, "ema": 0.9996},
    }
    for preset, o in official.items():
        config = PretrainConfig(**{**PRESETS[preset], "arch": "tiny"})  # the schedules do not depend on the width
        assert (config.family, config.crop_seconds, config.batch_size) == ("frame", 10.0, o["batch"])
        assert (config.mask_prob, config.mask_span, config.min_spans) == (0.65, 5, 2)
        module = ATSTPretraining(config.to_dict(), world_size=o["nproc"])
        lr = official_schedule(o["lr"] * o["nproc"] * o["batch"] / 256, 1e-6, o["steps"], o["warmup"])
        wd = official_schedule(0.04, 0.4, o["steps"])
        ema = official_schedule(o["ema"], 1.0, o["steps"])
        for step in (0, 1, o["warmup"] // 2, o["warmup"] - 1, o["warmup"], o["steps"] // 2, o["steps"] - 1):
            assert module.lr_at(step) == pytest.approx(lr[step], rel=1e-12, abs=1e-15)
            assert module.wd_at(step) == pytest.approx(wd[step], rel=1e-12)
            assert module.ema_at(step) == pytest.approx(ema[step], rel=1e-12)
        hparams = module.hparams
        assert (hparams["anchor_len"], hparams["mask_ratio"], hparams["mask_len"], hparams["mask_type"]) == (
            10.0,
            0.65,
            5,
            "block",
        )


def test_parameter_groups_decay_pos_and_mask_embed_as_officially():
    """get_params_groups: biases and 1-D tensors undecayed; pos_embed and mask_embed (3-D) decayed."""
    from pretrain.training.config import PRESETS, PretrainConfig
    from pretrain.training.lightning_module import ATSTPretraining

    module = ATSTPretraining(PretrainConfig(**PRESETS["frame-tiny"]).to_dict())
    decay, no_decay = (group["params"] for group in module.configure_optimizers().param_groups)
    named = dict(module.model.student.named_parameters())
    ids = {id(p) for p in decay}
    assert id(named["encoder.pos_embed"]) in ids and id(named["encoder.mask_embed"]) in ids
    assert id(named["encoder.blocks.0.norm1.weight"]) not in ids
    assert id(named["encoder.blocks.0.mlp.fc1.bias"]) not in ids
    assert len(decay) + len(no_decay) == sum(1 for p in named.values() if p.requires_grad)


def test_data_source_is_chosen_explicitly_or_guessed(corpus):
    import dataclasses

    from pretrain.training.config import PRESETS, PretrainConfig
    from pretrain.training.data import DatasetError
    from pretrain.training.sources import open_source
    from pretrain.training.sources.shards import ShardSource

    config = PretrainConfig(**{**PRESETS["tiny"], "data": str(corpus)})
    assert open_source(config).kind == "files"  # auto: a folder of audio files
    assert open_source(dataclasses.replace(config, data_format="files")).layout()["items"] == 25
    with pytest.raises(DatasetError, match="no shards"):  # asked for shards, a folder of wavs is refused
        open_source(dataclasses.replace(config, data_format="shards"))
    for data in ("pipe:cat a.tar", "shards/s-{000000..000009}.tar", "one.tar", "a.tar::b.tar"):
        assert ShardSource.claims(data), data
