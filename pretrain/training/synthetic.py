"""A small synthetic audio corpus for demos and tests: clearly labelled synthetic sound
(harmonic tones, chirps, noise bursts, click trains, with envelopes and mixtures)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATES = (16000, 22050, 44100)


def _event(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    kind = rng.integers(4)
    if kind == 0:  # harmonic tone with vibrato
        f0 = 110 * 2 ** rng.uniform(0, 3)
        vib = 1 + 0.01 * np.sin(2 * math.pi * rng.uniform(3, 7) * t)
        x = sum(np.sin(2 * math.pi * f0 * h * np.cumsum(vib) / rate) / h ** rng.uniform(0.5, 2) for h in range(1, 8))
    elif kind == 1:  # chirp
        f0, f1 = rng.uniform(100, 1000), rng.uniform(500, 6000)
        x = np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
    elif kind == 2:  # band-limited noise burst
        x = np.convolve(rng.standard_normal(n), np.hanning(int(rng.integers(2, 40))), mode="same")
    else:  # click train
        x = np.zeros(n)
        x[:: max(1, int(rate / rng.uniform(2, 30)))] = 1.0
    attack, release = rng.uniform(0.005, 0.2), rng.uniform(0.05, 0.5)
    envelope = np.minimum(1.0, np.minimum(t / attack, (t[-1] - t) / release + 1e-9))
    return envelope * x / (np.abs(x).max() + 1e-9)


def make_corpus(
    out_dir: str | Path, *, n_clips: int = 64, seconds: tuple[float, float] = (1.5, 5.0), seed: int = 0
) -> list[Path]:
    """Write ``n_clips`` synthetic clips (wav and flac, several sample rates, some stereo)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_clips):
        rate = int(SAMPLE_RATES[i % len(SAMPLE_RATES)])
        n = int(rng.uniform(*seconds) * rate)
        clip = 0.003 * rng.standard_normal(n)
        for _ in range(int(rng.integers(1, 4))):  # mixtures of 1-3 events
            length = int(rng.uniform(0.2, 1.0) * n)
            start = int(rng.integers(0, n - length + 1))
            clip[start : start + length] += rng.uniform(0.1, 0.5) * _event(rng, length, rate)
        clip = 0.9 * clip / max(1.0, np.abs(clip).max())
        if i % 5 == 0:
            clip = np.stack([clip, 0.8 * clip], axis=1)
        path = out_dir / f"synthetic_{i:04d}.{'flac' if i % 4 == 3 else 'wav'}"
        soundfile.write(str(path), clip.astype(np.float32), rate)
        paths.append(path)
    return paths
