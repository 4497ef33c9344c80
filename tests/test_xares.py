"""X-ARES (xares 0.1.3, real): the encoder under xares's own checker, padding invariance with
xares's own batch padding, the exporter's tasks run end to end by ``xares.run`` through the runner,
and the runner's errors. Harness stack (xares reads audio through torchaudio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atst_hear import get_timestamp_embeddings, load_model
from atst_xares.settings import EncoderSettings, EncoderSettingsError, settings_from_env
from atst_xares.task import export_task
from pretrain import write_random_checkpoint
from pretrain.finetune.generated_tasks import (
    EVENT_LABELS,
    make_event_task,
    make_multilabel_scene_task,
    make_scene_task,
)
from pretrain.model.hear_task import TaskError

# Deselected on the current stack (-m "not xares"): this module imports xares only inside its tests.
pytestmark = pytest.mark.xares


def encoder_of(path: Path, blocks: str = "mean", precision: str = "float32"):
    from xares.utils import attr_from_py_path

    # as xares finds it: the one name ending in "Encoder" in the module
    cls = attr_from_py_path("atst_xares.encoder", endswith="Encoder")
    return cls(EncoderSettings(str(path), blocks, precision))


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xares_ckpt")
    return {f: write_random_checkpoint(root / f"{f}.ckpt", "tiny", family=f, seed=3) for f in ("clip", "frame")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A generated scene task (4 sounds) and event task (tone / noise bursts) as xares tasks."""
    root = tmp_path_factory.mktemp("xares_tasks")
    make_scene_task(root / "hear", per_class=(10, 4, 4))
    make_event_task(root / "hear", counts=(24, 6, 6))
    return {
        "scene": export_task(root / "hear" / "synth_scene", root / "xares", epochs=30, lr=1e-2),
        "event": export_task(root / "hear" / "synth_event", root / "xares", epochs=40, lr=1e-2),
        "hear": root / "hear",
    }


@pytest.mark.parametrize("family", ["clip", "frame"])
def test_xares_checker_accepts_both_families(family, lightning_small_ckpt, frame_small_ckpt, monkeypatch):
    from xares import audio_encoder_checker as xares_checker
    from xares.utils import attr_from_py_path

    ckpt = {"clip": lightning_small_ckpt, "frame": frame_small_ckpt}[family]
    monkeypatch.setenv("ATST_CHECKPOINT", str(ckpt))

    encoder = attr_from_py_path("atst_xares.encoder", endswith="Encoder")()  # no arguments, as xares builds it
    assert encoder.family == family and encoder.output_dim == 384
    assert xares_checker.check_audio_encoder(encoder)
    out = encoder(torch.randn(2, 50000))
    assert out.dtype == torch.float32 and out.shape == (2, 78, 384)
    # all blocks: HEAR's timestamp embeddings, concatenated; the same numbers
    wide = encoder_of(ckpt, "all")
    assert wide.output_dim == 12 * 384 and xares_checker.check_audio_encoder(wide)
    audio = 0.1 * torch.randn(1, 40000)
    hear, _ = get_timestamp_embeddings(audio, load_model(str(ckpt)))
    torch.testing.assert_close(wide(audio), hear, rtol=1e-4, atol=1e-5)


def test_frames_do_not_depend_on_xares_padding(frame_small_ckpt, lightning_small_ckpt):
    from xares.audiowebdataset import pad

    gen = torch.Generator().manual_seed(0)
    # 12.5 s is past Frame's 10 s crop (two chunks on the token grid); 0.7 s is a short clip
    clips = [0.1 * torch.randn(n, generator=gen) for n in (200_000, 48_000, 11_200)]
    batch, lengths = pad(clips)  # xares's own padding; the lengths are what xares throws away
    for ckpt in (frame_small_ckpt, lightning_small_ckpt):
        encoder = encoder_of(ckpt, "mean")
        together = encoder(batch)
        assert together.shape[1] == (batch.shape[1] // 160 + 1) // 4
        for i, clip in enumerate(clips):
            alone = encoder(clip[None])[0]
            torch.testing.assert_close(together[i, : alone.shape[0]], alone, rtol=1e-4, atol=1e-5)
            assert not together[i, alone.shape[0] :].any()  # past its end: zeros
        # an all-zero clip and a batch shorter than one token: one token of frames each, no error
        short = encoder(torch.zeros(2, 300))
        assert short.shape == (2, 1, encoder.output_dim) and torch.isfinite(short).all()
        # bfloat16 inside, float32 out
        assert encoder_of(ckpt, "last", "bfloat16")(batch[:1]).dtype == torch.float32


def test_encoder_settings_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("ATST_CHECKPOINT", raising=False)
    with pytest.raises(EncoderSettingsError, match="ATST_CHECKPOINT is not set"):
        settings_from_env()
    monkeypatch.setenv("ATST_CHECKPOINT", "x.ckpt")
    monkeypatch.setenv("ATST_BLOCKS", "middle")
    with pytest.raises(EncoderSettingsError, match="ATST_BLOCKS='middle'"):
        settings_from_env()
    monkeypatch.delenv("ATST_BLOCKS")
    from xares.utils import attr_from_py_path

    from pretrain.model.checkpoint import CheckpointError, CheckpointNotFoundError

    built_by_xares = attr_from_py_path("atst_xares.encoder", endswith="Encoder")
    monkeypatch.setenv("ATST_CHECKPOINT", str(tmp_path / "gone.ckpt"))
    with pytest.raises(CheckpointNotFoundError, match=r"^ATST_CHECKPOINT=.*gone\.ckpt: checkpoint not found"):
        built_by_xares()
    foreign = tmp_path / "notes.ckpt"
    foreign.write_text("not a checkpoint")
    monkeypatch.setenv("ATST_CHECKPOINT", str(foreign))
    with pytest.raises(CheckpointError, match=r"^ATST_CHECKPOINT=.*notes\.ckpt: not a PyTorch checkpoint"):
        built_by_xares()
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        encoder_of(foreign)


def chance_segment_f1(hear_task: Path) -> float:
    """xares's segment F1 of predicting every label in every frame, on the test split."""
    from xares.metrics import ALL_METRICS

    from atst_xares.task_config import FrameTargets

    metric = ALL_METRICS["segmentf1_macro"].metric(hop_size_in_ms=40.0, segment_length_in_s=1.0)
    targets = FrameTargets(list(EVENT_LABELS), 40.0, 15.0)
    for events in json.loads((hear_task / "test.json").read_text()).values():
        target = targets({"events": events, "duration_ms": 4000.0}).T[None]
        metric.update((torch.ones_like(target), target))
    return float(metric.compute())


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_runner(checkpoint: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m atst_xares.run --checkpoint CHECKPOINT --work WORK --quiet ARGS...``"""
    return run_cli("-m", "atst_xares.run", "--checkpoint", str(checkpoint), "--work", str(work), "--quiet", *args)


def test_runner_scores_clip_and_frame_tasks_above_chance(tiny_ckpts, exported, tmp_path):
    """ATST-Frame through the runner; ATST-Clip through xares itself (the next test)."""
    family = "frame"
    work = tmp_path / "work"
    report = tmp_path / "scores.json"
    done = run_runner(tiny_ckpts[family], work, "--json", str(report), str(exported["scene"]), str(exported["event"]))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(report.read_text())
    assert scores["synth_scene"]["mlp"] > 0.6 and scores["synth_scene"]["knn"] > 0.5  # 4 classes: chance 0.25
    assert scores["synth_scene"]["test_clips"] == 16
    chance = chance_segment_f1(exported["hear"] / "synth_event")
    assert scores["synth_event"]["mlp"] > chance + 0.15, (scores, chance)
    # a second checkpoint under the same class gets its own folder: never the first one's cache
    other = write_random_checkpoint(tmp_path / "other.ckpt", "tiny", family=family, seed=4)
    again = run_runner(other, work, str(exported["scene"]))
    assert again.returncode == 0, again.stderr[-3000:]
    folders = sorted(p.name for p in work.iterdir())
    assert len(folders) == 2 and {f.split("-")[0] for f in folders} == {family, "other"}
    for folder in work.iterdir():  # each scored by its own probe
        assert (folder / "env" / "synth_scene" / "checkpoints" / "ATSTXaresEncoder" / "mlp_score.txt").is_file()
    # other data under the task's name (a new export): the folder starts afresh, no stale embeddings
    make_scene_task(tmp_path / "hear2", per_class=(10, 4, 2), seed=5)
    renewed = export_task(tmp_path / "hear2" / "synth_scene", tmp_path / "xares2", epochs=30, lr=1e-2)
    third = run_runner(other, work, "--json", str(report), str(renewed))
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads(report.read_text())["synth_scene"]["test_clips"] == 8  # the new test split, not 16
    # the data were linked, not written: the exported folder holds no embeddings or probes
    assert not (exported["scene"].parent / "env" / "synth_scene" / "embeddings").exists()


def test_plain_xares_run_in_the_export_folder(tiny_ckpts, exported, tmp_path):
    """A user's own ``python -m xares.run`` on exported tasks, from their folder, as xares expects:
    ATST-Clip on the clip and the frame task."""
    import os

    scene = export_task(exported["hear"] / "synth_scene", tmp_path / "mine", epochs=30, lr=1e-2)
    event = export_task(exported["hear"] / "synth_event", tmp_path / "mine", epochs=40, lr=1e-2)
    tags = export_task(make_multilabel_scene_task(tmp_path / "hear"), tmp_path / "mine", epochs=30, lr=1e-2)
    env = {**os.environ, "ATST_CHECKPOINT": str(tiny_ckpts["clip"])}
    folder = scene.parent
    modules = [scene.name, event.name, tags.name]
    done = run_cli("-m", "xares.run", "--max-jobs", "0", "atst_xares.encoder", *modules, cwd=folder, env=env)
    assert done.returncode == 0, done.stdout[-3000:]

    def mlp_score(task: str) -> float:
        path = folder / "env" / task / "checkpoints" / "ATSTXaresEncoder" / "mlp_score.txt"
        return float(path.read_text().split()[0])

    assert mlp_score("synth_scene") > 0.6
    assert mlp_score("synth_event") > chance_segment_f1(exported["hear"] / "synth_event") + 0.15
    # multilabel: mAP; a constant scorer's mAP is each label's frequency
    test = json.loads((tmp_path / "hear" / "synth_tags" / "test.json").read_text())
    labels = {label for tags_of in test.values() for label in tags_of}
    prior = sum(sum(label in t for t in test.values()) / len(test) for label in labels) / len(labels)
    assert mlp_score("synth_tags") > prior + 0.15, (mlp_score("synth_tags"), prior)


def test_runner_errors(tiny_ckpts, exported, tmp_path):
    task = str(exported["scene"])
    missing = run_cli("-m", "atst_xares.run", "--checkpoint", str(tmp_path / "none.ckpt"), task)
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"PK\x03\x04 not really a zip")
    bad = run_cli("-m", "atst_xares.run", "--checkpoint", str(foreign), task)
    assert bad.returncode == 1 and "foreign.ckpt" in bad.stderr
    # a task whose shard is corrupt: xares's reader skips it with a hidden warning, encodes and scores
    # the rest and exits 0; the runner counts the clips and exits 1
    broken = tmp_path / "broken"
    data = broken / "env" / "synth_scene"
    data.mkdir(parents=True)
    for item in (exported["scene"].parent / "env" / "synth_scene").glob("*.*"):
        (data / item.name).write_bytes(item.read_bytes())
    (data / "train-000000.tar").write_bytes(b"\0garbage" * 1000)
    (broken / "synth_scene_task.py").write_text(exported["scene"].read_text())
    failed = run_runner(tiny_ckpts["clip"], tmp_path / "w", str(broken / "synth_scene_task.py"))
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "stage 1 (encode) lost clips: train-000000.tar is not a readable tar" in failed.stderr
    # a task of xares's own kind whose data are not here: its stage 0 downloads from Zenodo (offline
    # here: refused), logs the error and exits 0
    (broken / "absent_task.py").write_text(
        "from xares.task import TaskConfig\n\n\n"
        "def absent_config(encoder=None):\n"
        "    return TaskConfig(name='absent', encoder=encoder, zenodo_id='14722472', output_dim=2)\n"
    )
    gone = run_runner(tiny_ckpts["clip"], tmp_path / "w", str(broken / "absent_task.py"))
    assert gone.returncode == 1 and "xares stage 0 (download) failed" in gone.stderr, gone.stderr[-2000:]


def test_exporter_checks_annotations_and_skips_broken_audio(tmp_path):
    root = make_event_task(tmp_path / "hear", counts=(6, 3, 3))
    train = json.loads((root / "train.json").read_text())
    first, second = sorted(train)[:2]
    (root / "16000" / "train" / first).write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")  # corrupt
    late = train[second][0]
    late["end"] = 9_000.0  # past the 4 s clip: cut at its end
    (root / "train.json").write_text(json.dumps(train))
    module = export_task(root, tmp_path / "out")
    data = module.parent / "env" / "synth_event"
    spec = json.loads((data / "task.json").read_text())
    assert spec["kind"] == "frame" and spec["metric"] == "segmentf1_macro" and spec["skipped"] == {"train": [first]}
    import webdataset as wds

    samples = {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(sorted(map(str, data.glob("train-*.tar"))))}
    assert Path(first).stem not in samples and len(samples) == 5
    assert max(e["end"] for e in samples[Path(second).stem]["events"]) == 4000.0
    train[second][0]["end"] = train[second][0]["start"] - 1
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(TaskError, match="ends .* before it starts"):
        export_task(root, tmp_path / "out2")
    train[second][0].update(end=late["start"] + 100, label="siren")
    (root / "train.json").write_text(json.dumps(train))
    with pytest.raises(TaskError, match="'siren' is not in labelvocabulary.csv"):
        export_task(root, tmp_path / "out3")


def test_kfold_task_runs_with_xares_folds(tiny_ckpts, tmp_path):
    """A k-fold HEAR task (new_split_kfold) keeps its folds: xares trains on the others, tests on each."""
    root = make_scene_task(tmp_path / "hear", name="synth_folds", per_class=(6, 6, 6))
    meta = json.loads((root / "task_metadata.json").read_text())
    for k, split in enumerate(("train", "valid", "test")):
        (root / f"{split}.json").rename(root / f"fold{k:02d}.json")
        (root / "16000" / split).rename(root / "16000" / f"fold{k:02d}")
    meta.update(split_mode="new_split_kfold", nfolds=3, splits=["fold00", "fold01", "fold02"])
    (root / "task_metadata.json").write_text(json.dumps(meta))
    module = export_task(root, tmp_path / "xares", epochs=30, lr=1e-2)
    data = module.parent / "env" / "synth_folds"
    assert sorted(p.name for p in data.glob("wds-audio-fold-fold01-*.tar")) == [
        f"wds-audio-fold-fold01-0{i:05d}.tar" for i in range(4)
    ]
    assert json.loads((data / "task.json").read_text())["test_clips"] == 24
    done = run_runner(tiny_ckpts["frame"], tmp_path / "w", "--json", str(tmp_path / "s.json"), str(module))
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads((tmp_path / "s.json").read_text())["synth_folds"]
    assert scores["mlp"] > 0.5 and scores["knn"] > 0.5  # the mean over the 3 folds; chance 0.25


def test_installing_the_xares_extra_keeps_torch_beside_its_torchaudio():
    """``pip install .[xares]`` where torchaudio matches torch (docs/xares.md's order): no torch, no
    torchaudio to install (xares asks torchaudio >= 2.2.1, which the installed one satisfies)."""
    from tests.support.pip_install import would_install

    installs = would_install("xares")
    assert "atst-plugins" in installs
    assert not installs & {"torch", "torchaudio", "numpy"}, installs
