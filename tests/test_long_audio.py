"""Long and odd audio through the HEAR API: shapes, finiteness, the 40 ms grid, memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atst_hear
from tests.support.numeric import noise


@pytest.mark.parametrize("seconds", [0.05, 1.0, 9.99, 10.01, 60.0])
def test_odd_lengths(tiny_model, seconds):
    audio = noise(2, seconds)
    scene = atst_hear.get_scene_embeddings(audio, tiny_model)
    emb, ts = atst_hear.get_timestamp_embeddings(audio, tiny_model)
    n_tokens = (audio.shape[1] // 160 + 1) // 4
    assert scene.shape == (2, tiny_model.scene_embedding_size) and torch.isfinite(scene).all()
    assert emb.shape == (2, n_tokens, tiny_model.timestamp_embedding_size) and torch.isfinite(emb).all()
    assert ts.shape == (2, n_tokens) and float(ts[0, -1]) <= 1000 * seconds


def test_batch_of_zero_padded_clips(tiny_model):
    """heareval pads clips of different lengths to one length with zeros (silence)."""
    audio = torch.zeros(4, 16000 * 12)
    for i, seconds in enumerate((0.3, 2.0, 7.5, 12.0)):
        audio[i, : int(seconds * 16000)] = noise(1, seconds, seed=i)[0]
    scene = atst_hear.get_scene_embeddings(audio, tiny_model)
    emb, _ = atst_hear.get_timestamp_embeddings(audio, tiny_model)
    assert torch.isfinite(scene).all() and torch.isfinite(emb).all()
    assert emb.shape[:2] == (4, 300)


@pytest.mark.parametrize("family", ["clip", "frame"])
def test_no_drift_over_ten_minutes(family, request):
    """Timestamps are exactly 15 + 40 k ms, and a burst near the end lands on its own tokens (Frame's
    official chunks would put it 0.6 s away from its timestamps by then)."""
    tiny_model = request.getfixturevalue("tiny_model" if family == "clip" else "tiny_frame_model")
    seconds = 600
    audio = 0.001 * noise(1, seconds, seed=1)
    burst_start, burst_end = 570.0, 570.4
    a, b = int(burst_start * 16000), int(burst_end * 16000)
    audio[0, a:b] += 0.5 * torch.sin(torch.arange(b - a) * 2 * torch.pi * 1000 / 16000)
    emb, ts = atst_hear.get_timestamp_embeddings(audio, tiny_model)
    k = torch.arange(ts.shape[1], dtype=torch.float64)
    assert torch.equal(ts[0].double(), 15.0 + 40.0 * k)
    # tokens that see the burst differ most from the quiet tokens around them
    distance = (emb[0] - emb[0, 14000:14100].mean(0)).norm(dim=1)
    near_burst = (ts[0] > 1000 * burst_start - 200) & (ts[0] < 1000 * burst_end + 200)
    loud = torch.nonzero(distance > 2 * distance[~near_burst].max()).flatten()
    times = ts[0, loud]
    assert times.min() >= 1000 * burst_start - 40 and times.max() <= 1000 * burst_end + 40
    assert len(loud) >= 8  # the burst spans 10 tokens


def test_one_hour_scene_embedding_small_within_2gb(lightning_small_ckpt):
    """Peak resident memory of the whole process (torch included) for a 1-hour clip, small model:
    the benchmark script, run as a user runs it."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "long_audio_memory.py"
    result = subprocess.run(
        [sys.executable, str(script), str(lightning_small_ckpt), "--json"], capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["shape"] == [1, 9216]
    assert figures["peak_mb"] < 2048, figures
