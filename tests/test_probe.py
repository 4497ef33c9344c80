"""The online probe's parts (k-NN, linear probe, collapse measures, log-mel baseline) and the
rendered-sound tasks it reads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from pretrain.finetune.generated_tasks import make_multilabel_scene_task
from pretrain.model.encoder import ATSTEncoder
from pretrain.model.frontend import LogMelFrontEnd
from pretrain.model.hear_task import HearTask, TaskError
from pretrain.training.probe import (
    ProbeTask,
    effective_rank,
    knn_accuracy,
    linear_accuracy,
    mel_statistics,
    probe_encoder,
    read_probe,
)
from pretrain.training.rendered_sound import MissingToolError, make_probe_tasks
from tests.support.pretrain_runs import ENV


def clusters(n_per: int, centres: torch.Tensor, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=g), labels


def test_knn_and_linear_separate_clusters_and_stay_at_chance_on_noise():
    centres = 3 * torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    fit, fit_labels = clusters(10, centres, 0.5, seed=1)
    test, test_labels = clusters(5, centres, 0.5, seed=2)
    assert knn_accuracy(fit, fit_labels, test, test_labels, 4) == 1.0
    assert linear_accuracy(fit, fit_labels, test, test_labels, 4) == 1.0
    # labels unrelated to the features: both near chance (0.25) on 400 test points
    noise, noise_test = torch.randn(400, 32), torch.randn(400, 32)
    labels, labels_test = torch.randint(4, (400,)), torch.randint(4, (400,))
    assert knn_accuracy(noise, labels, noise_test, labels_test, 4) < 0.35
    assert linear_accuracy(noise, labels, noise_test, labels_test, 4) < 0.35


def test_linear_probe_is_scale_free_where_cosine_knn_is_not():
    # loud dimensions that carry no label swamp cosine similarity, not the standardised linear probe
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    fit, fit_labels = clusters(20, centres, 0.3, seed=1)
    test, test_labels = clusters(10, centres, 0.3, seed=2)
    loud = [torch.cat([x, 100 * torch.randn(len(x), 8)], 1) for x in (fit, test)]
    assert knn_accuracy(loud[0], fit_labels, loud[1], test_labels, 4) < 0.6
    assert linear_accuracy(loud[0], fit_labels, loud[1], test_labels, 4) == 1.0


@pytest.mark.parametrize("k", [1, 3, 10])
def test_effective_rank_counts_equally_spread_dimensions(k):
    basis = torch.linalg.qr(torch.randn(64, 64))[0][:, :k]
    embeddings = torch.randn(2000, k) @ basis.T + 5.0  # an offset: the measure centres first
    assert effective_rank(embeddings) == pytest.approx(k, rel=0.1)


def test_mel_statistics_ignore_padding():
    frontend = LogMelFrontEnd()
    wavs = [0.1 * torch.randn(16000), 0.1 * torch.randn(8000)]
    padded, lengths = frontend.batch(wavs)
    alone = frontend.batch(wavs[1:])
    assert torch.allclose(mel_statistics(padded, lengths)[1], mel_statistics(*alone)[0], atol=1e-5)


def test_rendered_tasks_are_hear_tasks_with_the_promised_labels(probe_tasks):
    names = [t.name for t in probe_tasks]
    assert names == ["speech_commands", "speaker", "instrument_family", "drum_hits"]
    for root in probe_tasks:
        task = HearTask.open(root)
        assert len(task.labels) == 8 and task.prediction_type == "multiclass"
        counts = [len(json.loads((root / f"{s}.json").read_text())) for s in ("train", "valid", "test")]
        assert counts == [32, 16, 24]
        test = task.read_split("test")
        assert all(w.abs().max() > 0.05 for w in test.wavs)  # real sound, not silence
    # the spoken words are real speech: an utterance's energy sits where speech has it
    audio, rate = soundfile.read(str(next((probe_tasks[0] / "16000" / "train").glob("yes_*.wav"))))
    assert rate == 16000 and np.abs(audio).max() > 0.1


def test_probe_of_a_random_encoder_reports_every_task(probe_tasks):
    frontend = LogMelFrontEnd()
    tasks = [ProbeTask.load(t, frontend) for t in probe_tasks]
    torch.manual_seed(0)
    encoder = ATSTEncoder.from_arch("tiny", family="clip")
    results = probe_encoder(encoder, tasks, chunk_seconds=2.0)
    for t in tasks:
        assert 0.0 <= results[f"{t.name}/knn"] <= 1.0 and 0.0 <= results[f"{t.name}/linear"] <= 1.0
        assert set(t.baseline) == {"knn", "linear"}
    assert 1.0 < results["effective_rank"] <= 2 * 192
    assert encoder.training  # the probe put the encoder back in the mode it found it


def test_probe_records_survive_a_line_cut_by_a_kill(tmp_path):
    lines = ['{"step": 0, "mean_knn": 0.5}', '{"step": 5, "mean_knn": 0.6}', '{"step": 10, "me']
    (tmp_path / "probe.jsonl").write_text("\n".join(lines))
    assert [r["step"] for r in read_probe(tmp_path)] == [0, 5]


def test_probe_refuses_multilabel_tasks_and_missing_folders(tmp_path, corpus):
    with pytest.raises(TaskError, match="multiclass trainvaltest"):
        ProbeTask.load(make_multilabel_scene_task(tmp_path), LogMelFrontEnd())
    command = [sys.executable, "-m", "pretrain", "train", "--preset", "tiny", "--data", str(corpus)]
    out = subprocess.run([*command, "--probe", str(tmp_path / "nope")], capture_output=True, text=True, env=ENV)
    assert out.returncode != 0 and "is not a HEAR task folder" in out.stderr


def test_probe_tasks_command_refuses_to_overwrite(probe_tasks):
    command = [sys.executable, "-m", "pretrain", "probe-tasks", str(probe_tasks[0].parent)]
    out = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert out.returncode != 0 and "exists already" in out.stderr and "Traceback" not in out.stderr


def test_rendering_without_the_debian_tools_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError, match="espeak-ng.*apt-get install"):
        make_probe_tasks(tmp_path / "tasks")


@pytest.mark.learning
@pytest.mark.stack_independent
def test_tiny_long_pretraining_beats_its_random_init(tmp_path):
    """A shortened `tiny-long` run on rendered real sound, probed on held-out rendered tasks: the
    conservative CI version of benchmarks/pretrain_learns.py (which runs the whole preset, two seeds)."""
    from pretrain.training.rendered_sound import make_rendered_corpus

    corpus = tmp_path / "corpus"
    make_rendered_corpus(corpus, n_clips=300, seed=0)
    tasks = make_probe_tasks(tmp_path / "tasks", seed=100)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "pretrain", "train", "--preset", "tiny-long", "--data", str(corpus)]
    command += ["--run-dir", str(run_dir), "--max-steps", "500", "--probe", ",".join(map(str, tasks))]
    result = subprocess.run([*command, "--probe-every", "250"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    start, end = read_probe(run_dir)[0], read_probe(run_dir)[-1]
    assert (start["step"], end["step"]) == (0, 500)
    # speech: the spoken commands become more linearly separable than in the random encoder's features
    assert end["speech_commands/linear"] >= start["speech_commands/linear"] + 0.05
    tasks = [t.name for t in tasks]
    mean_linear = [sum(r[f"{t}/linear"] for t in tasks) / len(tasks) for r in (start, end)]
    assert mean_linear[1] >= mean_linear[0]
    # no task's neighbourhoods fall apart (the EMA 0.99 recipe at this scale loses 10-40 k-NN points)
    for t in tasks:
        assert end[f"{t}/knn"] >= start[f"{t}/knn"] - 0.05, t
    # and the embeddings keep their spread (EMA 0.99: a third of the random encoder's effective rank)
    assert end["effective_rank"] > 0.5 * start["effective_rank"]
