"""Small synthetic datasets in the exact on-disk layouts of s3prl's downstreams.

The label is carried by the sound: each keyword / speaker has its own fundamental and
timbre; utterances vary in pitch (+-3 %), level, length and noise.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import soundfile

SR = 16000


def _voice(rng: np.random.Generator, f0: float, n_harmonics: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = f0 * (1 + rng.uniform(-0.03, 0.03))
    x = sum(np.sin(2 * math.pi * f0 * h * t + rng.uniform(0, 6.28)) / h for h in range(1, n_harmonics + 1))
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    x = x * envelope + 0.02 * rng.standard_normal(t.size)
    return (rng.uniform(0.1, 0.4) * x / np.abs(x).max()).astype(np.float32)


def _write(path: Path, wav: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wav, SR)


def speech_commands_split(speaker: str) -> str:
    """s3prl's train/dev assignment: a hash of the speaker prefix (it ignores validation_list.txt)."""
    prefix = re.sub(r"_nohash_.*$", "", speaker)
    value = int(hashlib.sha1(prefix.encode()).hexdigest(), 16) % (2**27)
    percentage = value * (100.0 / (2**27 - 1))
    return "dev" if percentage < 10 else "discarded" if percentage < 20 else "train"


KEYWORDS = {"yes": (220.0, 2), "no": (330.0, 6), "up": (495.0, 3), "down": (740.0, 1)}


def make_speech_commands(root: Path, *, train_speakers: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """``train/<word>/<speaker>_nohash_<i>.wav`` + ``train/_background_noise_/*.wav`` and
    ``test/<word>/*.wav``; returns (train_root, test_root). Dev gets at least one speaker."""
    rng = np.random.default_rng(seed)
    train, test = root / "train", root / "test"
    candidates = [f"{i:08x}" for i in range(1000)]
    dev_speakers = [s for s in candidates if speech_commands_split(s) == "dev"][:2]
    speakers = [s for s in candidates if speech_commands_split(s) == "train"][:train_speakers] + dev_speakers
    for word, (f0, harmonics) in KEYWORDS.items():
        for speaker in speakers:
            for i in range(2):
                _write(train / word / f"{speaker}_nohash_{i}.wav", _voice(rng, f0, harmonics, rng.uniform(0.8, 1.0)))
        for i in range(3):
            _write(test / word / f"test{i:02d}_nohash_0.wav", _voice(rng, f0, harmonics, 1.0))
    for i in range(2):
        _write(train / "_background_noise_" / f"noise{i}.wav", (0.05 * rng.standard_normal(3 * SR)).astype(np.float32))
    return train, test


SPEAKERS = {"id10001": (110.0, 6), "id10002": (170.0, 3), "id10003": (260.0, 8), "id10004": (390.0, 2)}


def make_voxceleb1(root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """``<root>/dev/wav/idNNNNN/<video>/<utt>.wav`` and ``iden_split.txt`` lines
    ``1|2|3 idNNNNN/<video>/<utt>.wav``; returns (file_path, meta_data)."""
    rng = np.random.default_rng(seed)
    lines = []
    for speaker, (f0, harmonics) in SPEAKERS.items():
        for u in range(8):
            rel = f"{speaker}/vid{u % 2}/{u:05d}.wav"
            _write(root / "dev" / "wav" / rel, _voice(rng, f0, harmonics, rng.uniform(1.0, 3.0)))
            lines.append(f"{1 if u < 5 else 2 if u < 6 else 3} {rel}")
    meta = root / "iden_split.txt"
    meta.write_text("\n".join(lines) + "\n")
    return root, meta
