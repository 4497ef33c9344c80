"""Sharded pretraining data: `pretrain shard` writes WebDataset tars, training streams them.

The corpus is generated audio; the shards are written by the real command, then damaged the
way real shards get damaged: bytes of one member overwritten (bit rot) and one shard cut off
mid-member (an interrupted download)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from pretrain import read_checkpoint
from pretrain.model.audio_io import load_audio
from pretrain.training.data import DatasetError
from pretrain.training.shard_stream import ShardStream, is_shard_source, resolve_shards
from pretrain.training.synthetic import make_corpus
from tests.support.pretrain_runs import ENV, data_order, kill_after_checkpoint, metrics, run_training, train_command

SHARD_SIZE = 3  # 25 inputs: 9 shards, one of them a single sample


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True, env=ENV)


@pytest.fixture(scope="module")
def clean_shards(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "clean"
    result = run_cli("shard", str(corpus), str(out), "--shard-size", str(SHARD_SIZE))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


@pytest.fixture(scope="module")
def damaged_shards(clean_shards, tmp_path_factory) -> tuple[Path, set[str]]:
    """A copy of the shards with one member's audio overwritten and one shard cut off in its second
    sample; returns the folder and the names of the samples training must skip."""
    out = tmp_path_factory.mktemp("shards") / "damaged"
    out.mkdir()
    for path in clean_shards.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    rot, cut = out / "shard-000002.tar", out / "shard-000005.tar"
    audio = [m for m in _members(rot) if not m.name.endswith(".json")][1]
    with open(rot, "r+b") as f:
        f.seek(audio.offset_data)
        f.write(b"\0" * 64)  # the codec header is gone; the tar structure is intact
    expected = {f"{rot.name}/{audio.name.split('.')[0]}"}
    second_audio = [m for m in _members(cut) if not m.name.endswith(".json")][1]
    data = cut.read_bytes()
    cut.write_bytes(data[: second_audio.offset_data + second_audio.size // 2])
    samples = {e["name"]: e["samples"] for e in json.loads((out / "index.json").read_text())["shards"]}
    expected |= {f"{cut.name}#{i}" for i in range(1, samples[cut.name])}
    return out, expected


# --- writing shards ---------------------------------------------------------------------------


def test_shard_command_writes_webdataset_tars_and_an_index(corpus, clean_shards):
    import webdataset

    index = json.loads((clean_shards / "index.json").read_text())
    assert index["format"] == "atst-shards" and index["encoding"] == "original"
    assert index["samples"] == 24 and len(index["shards"]) == 9
    assert [s["path"] for s in index["skipped"]] == ["zz_corrupt.wav"]
    assert "cannot decode" in index["skipped"][0]["reason"]
    # any WebDataset reader streams them: webdataset's own pipeline, no code of this package
    urls = [str(clean_shards / s["name"]) for s in index["shards"]]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 24 == len({s["__key__"] for s in samples})
    sources = {json.loads(s["json"])["source"] for s in samples}
    assert sources == {p.name for p in corpus.iterdir() if p.name != "zz_corrupt.wav"}
    for sample in samples[:4]:  # the original encoded bytes
        meta = json.loads(sample["json"])
        ext = Path(meta["source"]).suffix.lstrip(".")
        assert sample[ext] == (corpus / meta["source"]).read_bytes()
        assert meta["seconds"] == pytest.approx(soundfile.info(str(corpus / meta["source"])).duration)
    assert sum(s["seconds"] for s in index["shards"]) == pytest.approx(index["seconds"])


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("shard-*.tar")}


def test_shard_command_resumes_and_is_deterministic(corpus, clean_shards, tmp_path):
    out = tmp_path / "again"
    for path in clean_shards.iterdir():
        (out / path.name).parent.mkdir(exist_ok=True)
        (out / path.name).write_bytes(path.read_bytes())
    # a killed run: one shard never finished (temporary file, no sidecar), one never started
    (out / "shard-000003.tar").rename(out / "shard-000003.tar.tmp")
    (out / "shard-000003.json").unlink()
    (out / "shard-000006.tar").unlink()
    (out / "shard-000006.json").unlink()
    (out / "index.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    result = run_cli("shard", str(corpus), str(out), "--shard-size", str(SHARD_SIZE), "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keeping 7 finished shards" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar") if p.name in kept} == kept
    assert _digests(out) == _digests(clean_shards)  # rewritten byte for byte, in two processes
    assert json.loads((out / "index.json").read_text()) == json.loads((clean_shards / "index.json").read_text())
    other = run_cli("shard", str(corpus), str(out), "--shard-size", "4")
    assert other.returncode == 2 and "holds shards of another plan" in other.stderr


def test_flac16k_shards_hold_the_resampled_mono_audio(corpus, tmp_path):
    import webdataset

    out = tmp_path / "flac"
    result = run_cli("shard", str(corpus), str(out), "--shard-size", "8", "--flac16k", "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    rates = set()
    for sample in webdataset.WebDataset(str(out / "shard-{000000..000003}.tar"), shardshuffle=False):
        assert set(sample) >= {"flac", "json"} and not {"wav", "ogg"} & set(sample)
        meta = json.loads(sample["json"])
        rates.add(meta["sample_rate"])
        wav, rate = soundfile.read(__import__("io").BytesIO(sample["flac"]), dtype="float32", always_2d=True)
        assert rate == 16000 and wav.shape[1] == 1
        reference = load_audio(corpus / meta["source"]).clamp(-1, 1).numpy()
        assert wav.shape[0] == reference.shape[0]
        assert np.abs(wav[:, 0] - reference).max() <= 1 / 32768 + 1e-7  # 16-bit quantisation only
    assert len(rates) > 1  # the corpus has several rates; all came out at 16 kHz


def test_shard_command_errors_are_clear(tmp_path, corpus):
    missing = run_cli("shard", str(tmp_path / "nothing"), str(tmp_path / "out"), "--shard-size", "3")
    assert missing.returncode == 2 and "dataset not found" in missing.stderr
    zero = run_cli("shard", str(corpus), str(tmp_path / "out"), "--shard-size", "0")
    assert zero.returncode == 2 and "--shard-size must be at least 1" in zero.stderr


# --- reading shards -----------------------------------------------------------------------------


def _stream(shards, *, rank=0, world=1, workers=1, start=0, end=10, batch=4, buffer=5):
    return ShardStream(
        shards,
        crop_seconds=1.0,
        n_crops=2,
        batch_size=batch,
        seed=3,
        rank=rank,
        world=world,
        workers=workers,
        start_batch=start,
        end_batch=end,
        shuffle_buffer=buffer,
    )


def _read(shards, **kw) -> list[dict]:
    workers = kw.get("workers", 1)
    loader = DataLoader(_stream(shards, **kw), batch_size=None, num_workers=workers if workers > 1 else 0)
    return list(loader)


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (1, 2), (2, 2)])
def test_resumed_stream_continues_exactly_and_passes_are_partitions(damaged_shards, world, workers):
    folder, skipped = damaged_shards
    shards = resolve_shards(str(folder))
    straight = {rank: _read(shards, rank=rank, world=world, workers=workers, end=14) for rank in range(world)}
    for start in (3, 8):
        for rank in range(world):
            resumed = _read(shards, rank=rank, world=world, workers=workers, start=start, end=14)
            for a, b in zip(straight[rank][start:], resumed, strict=True):
                assert a["names"] == b["names"] and a["skipped"] == b["skipped"]
                assert torch.equal(a["wavs"], b["wavs"])  # the same crops too
    passes: dict[int, Counter] = {}
    for batches in straight.values():
        for batch in batches:
            for name, pass_number in batch["passes"]:
                passes.setdefault(pass_number, Counter())[name] += 1
    names = set(passes[0])
    assert len(names) == 24 and set(passes[0].values()) == {1}  # pass 0: each sample once, across ranks
    assert skipped <= names
    ran_skipped = {n for batches in straight.values() for b in batches for n in b["skipped"]}
    assert ran_skipped == skipped  # the overwritten member and the cut-off shard's rest, nothing else


def test_streaming_through_pipe_urls_reads_the_same(clean_shards):
    local = resolve_shards(str(clean_shards / "shard-{000000..000008}.tar"))
    assert len(local) == 9
    piped_spec = "::".join(f"pipe:cat {s.url}" for s in local)
    with pytest.raises(DatasetError, match="need --shard-index"):
        resolve_shards(piped_spec)
    piped = resolve_shards(piped_spec, clean_shards / "index.json")
    assert [s.samples for s in piped] == [s.samples for s in local]
    a, b = _read(local, end=8), _read(piped, end=8)
    assert [x["names"] for x in a] == [x["names"] for x in b]
    assert all(torch.equal(x["wavs"], y["wavs"]) for x, y in zip(a, b, strict=True))


def test_shard_sources_and_their_errors(clean_shards, tmp_path):
    assert is_shard_source(str(clean_shards)) and is_shard_source("pipe:cat a.tar")
    assert is_shard_source("x/shard-{000000..000003}.tar") and not is_shard_source(str(tmp_path))
    shards = resolve_shards(str(clean_shards))
    with pytest.raises(DatasetError, match="9 shards cannot feed 2 ranks x 5 loader workers = 10 streams"):
        _stream(shards, world=2, workers=5)
    with pytest.raises(DatasetError, match="shard not found"):
        resolve_shards(str(clean_shards / "shard-{000000..000012}.tar"))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-000000.tar").write_bytes((clean_shards / "shard-000000.tar").read_bytes())
    with pytest.raises(DatasetError, match="shard index not found"):
        resolve_shards(str(stray / "shard-000000.tar"))
    assert is_shard_source(str(stray))  # a folder of shards without an index is not read as audio files
    with pytest.raises(DatasetError, match="shard index not found"):
        resolve_shards(str(stray))
    (stray / "index.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DatasetError, match="not a shard index"):
        resolve_shards(str(stray / "shard-000000.tar"))
    (stray / "index.json").write_text(json.dumps({"format": "atst-shards", "shards": []}))
    with pytest.raises(DatasetError, match="is not in the shard index"):
        resolve_shards(str(stray / "shard-000000.tar"))


# --- training from shards -----------------------------------------------------------------------

FLAGS = ["--batch-size", "4", "--warmup-steps", "2", "--log-every", "1", "--log-data-order", "true"]


@pytest.mark.parametrize("family", ["clip", "frame"])
def test_training_from_shards_skips_and_counts_damage(damaged_shards, tmp_path, family):
    folder, skipped = damaged_shards
    run_dir = tmp_path / family
    # 2 loader workers (2 streams of about 12 samples), 8 samples a step: 16 steps are several passes
    run_training(folder, run_dir, "--max-steps", "16", "--num-workers", "2", *FLAGS, "--batch-size", "8", family=family)
    final = read_checkpoint(run_dir / "checkpoints" / "final.ckpt")
    assert final["global_step"] == 16
    records = [json.loads(line) for line in (run_dir / "data_order.jsonl").read_text().splitlines()]
    first_pass = {name for record in records for name, pass_number in record["passes"] if pass_number == 0}
    assert first_pass >= skipped and len(first_pass) == 24
    assert final["skipped_files"] == sum(len(record["skipped"]) for record in records) >= len(skipped)
    logged = metrics(run_dir)["data/skipped_files"]
    assert logged[max(logged)] == final["skipped_files"]
    loss = metrics(run_dir)["train/loss"]
    assert all(np.isfinite(v) for v in loss.values())


@pytest.mark.stack_independent
def test_kill_and_resume_from_shards_matches_uninterrupted_run(damaged_shards, tmp_path):
    folder, _ = damaged_shards
    flags = ["--checkpoint-every", "4", *FLAGS]
    two_workers = ["--max-steps", "12", "--num-workers", "2", *flags]
    run_training(folder, tmp_path / "straight", *two_workers)
    interrupted = tmp_path / "interrupted"
    before = kill_after_checkpoint(train_command(folder, interrupted, *two_workers), interrupted, step=8)
    assert 8 <= before < 12
    result = run_training(folder, interrupted, *two_workers)
    assert "resuming from" in result.stderr and "another data layout" not in result.stderr
    assert data_order(tmp_path / "straight") == data_order(interrupted)
    finals = [read_checkpoint(d / "checkpoints" / "final.ckpt") for d in (tmp_path / "straight", interrupted)]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 12
    assert finals[0]["skipped_files"] == finals[1]["skipped_files"]
    straight, resumed = metrics(tmp_path / "straight"), metrics(interrupted)
    assert all(resumed["train/lr"][s] == straight["train/lr"][s] for s in range(12))
    # another layout resumes too, and says what it gives up
    more = run_training(folder, interrupted, "--max-steps", "14", "--num-workers", "1", *flags)
    assert "another data layout" in more.stderr
    assert read_checkpoint(interrupted / "checkpoints" / "final.ckpt")["global_step"] == 14


@pytest.mark.stack_independent
def test_two_process_ddp_from_shards_sees_each_sample_once_per_pass(clean_shards, tmp_path):
    run_dir = tmp_path / "ddp"
    ddp = ["--devices", "2", "--strategy", "ddp", "--checkpoint-every", "4"]
    run_training(clean_shards, run_dir, "--max-steps", "8", "--num-workers", "1", *ddp, *FLAGS, family="frame")
    final = read_checkpoint(run_dir / "checkpoints" / "final.ckpt")
    assert final["global_step"] == 8 and final["hyper_parameters"]["world_size"] == 2
    per_rank = [run_dir / "data_order.jsonl", run_dir / "data_order.rank1.jsonl"]
    passes: dict[int, Counter] = {}
    ranks_of: dict[str, set[int]] = {}
    for rank, path in enumerate(per_rank):
        for line in path.read_text().splitlines():
            for name, pass_number in json.loads(line)["passes"]:
                passes.setdefault(pass_number, Counter())[name] += 1
                ranks_of.setdefault(f"{pass_number}:{name}", set()).add(rank)
    assert len(passes[0]) == 24 and set(passes[0].values()) == {1}
    assert all(len(r) == 1 for r in ranks_of.values())
    assert {r for rs in ranks_of.values() for r in rs} == {0, 1}


# --- the AudioSet workflow ----------------------------------------------------------------------

AUDIOSET_CSV = """\
# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
--ZhevVpy1s, 50.000, 60.000, "/m/012xff"
--aE2O5G5WE, 0.000, 10.000, "/m/03fwl,/m/04rlf,/m/09x0r"
-0BIyqJj9ZU, 30.000, 40.000, "/m/07rgt08"
"""


def test_audioset_workflow_manifest_check_shard_train(tmp_path):
    """Official CSV + files named as three downloaders name them (one video gone, one file broken,
    one stray file) -> manifest -> check -> shard -> train."""
    (tmp_path / "balanced_train_segments.csv").write_text(AUDIOSET_CSV)
    audio = tmp_path / "downloads"
    clips = make_corpus(tmp_path / "made", n_clips=3, seconds=(2.0, 3.0))
    (audio / "sub").mkdir(parents=True)
    clips[0].rename(audio / f"--PJHxphWEs{clips[0].suffix}")
    clips[1].rename(audio / "sub" / f"Y--ZhevVpy1s{clips[1].suffix}")
    (audio / "--aE2O5G5WE_0.000_10.000.wav").write_bytes(b"RIFF broken download")
    clips[2].rename(audio / f"notinthecsv{clips[2].suffix}")
    manifest = tmp_path / "manifest.csv"
    made = run_cli(
        "manifest",
        "--audioset-csv",
        str(tmp_path / "balanced_train_segments.csv"),
        "--audio-dir",
        str(audio),
        "--out",
        str(manifest),
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert "3 of 4 segments have a file (1 missing)" in made.stdout and "1 audio files" in made.stdout
    rows = manifest.read_text().splitlines()
    assert rows[0] == "path,ytid,labels" and len(rows) == 4
    assert "downloads/sub/Y--ZhevVpy1s" in manifest.read_text()
    assert rows[3].endswith(',--aE2O5G5WE,"/m/03fwl,/m/04rlf,/m/09x0r"')  # the official label field
    checked = run_cli("check", str(manifest), "--crop-seconds", "2")
    assert checked.returncode == 0 and "3 files, 2 readable" in checked.stdout
    shards = tmp_path / "shards"
    sharded = run_cli("shard", str(manifest), str(shards), "--shard-size", "1", "--flac16k")
    assert sharded.returncode == 0 and "3 shards, 2 samples" in sharded.stdout  # one holds only the broken file
    assert "SKIPPED downloads/--aE2O5G5WE_0.000_10.000.wav" in sharded.stdout
    run_training(
        shards / "shard-{000000..000002}.tar",
        tmp_path / "run",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--warmup-steps",
        "1",
        "--checkpoint-every",
        "3",
    )
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "final.ckpt")["global_step"] == 3


def test_audioset_manifest_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("# header\nnot,an,audioset,row\n")
    out = run_cli(
        "manifest", "--audioset-csv", str(bad), "--audio-dir", str(tmp_path), "--out", str(tmp_path / "m.csv")
    )
    assert out.returncode == 2 and "not an AudioSet segments row" in out.stderr
    good = tmp_path / "good.csv"
    good.write_text(AUDIOSET_CSV)
    out = run_cli(
        "manifest", "--audioset-csv", str(good), "--audio-dir", str(tmp_path), "--out", str(tmp_path / "m.csv")
    )
    assert out.returncode == 2 and "none of the 4 segments has a file" in out.stderr
