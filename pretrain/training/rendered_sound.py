"""Real sound made on the machine, without network: speech from Debian's ``espeak-ng`` and
``flite`` voices, instruments and drums from a General MIDI soundfont rendered by ``fluidsynth``.

It serves two purposes: an unlabelled pretraining corpus (``make_rendered_corpus``), and
HEAR-format probe tasks whose labels the sound carries but whose log-mel statistics alone do not
give away (``make_probe_tasks``): which word was spoken (across voices, speeds and pitches), who
spoke (across words), which instrument family plays (across programs and pitches), which drum
was struck (across velocities and times). The probe tasks are drawn from other seeds than the
corpus, and the command words and the speaker task's words never occur in the corpus.

The Debian packages (``espeak-ng``, ``flite``, ``fluidsynth`` and a GM soundfont such as
``timgm6mb-soundfont``) are installed by ``scripts/setup_env.sh`` where it runs as root;
``missing_tools`` names what is absent.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from pretrain.model.audio_io import load_audio
from pretrain.model.hear_task import event_metadata, scene_metadata, write_task

SAMPLE_RATE = 16000
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2")
DEBIAN_PACKAGES = "espeak-ng flite fluidsynth timgm6mb-soundfont"

COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")
SPEAKER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# words of the pretraining corpus: none is a command or a speaker-task word
CORPUS_WORDS = (
    "the quick brown fox jumps over a lazy dog while seven singers hum quietly near old harbour "
    "lights and river boats drift past green hills under heavy morning clouds"
).split()
CORPUS_WORDS = tuple(w for w in CORPUS_WORDS if w not in COMMAND_WORDS + SPEAKER_WORDS)
# (program, engine): espeak-ng voice variants and flite's built-in voices
VOICES = (
    ("en-us+m1", "espeak"),
    ("en-us+f2", "espeak"),
    ("en-gb+m4", "espeak"),
    ("en-gb-scotland+f4", "espeak"),
    ("kal", "flite"),
    ("awb", "flite"),
    ("rms", "flite"),
    ("slt", "flite"),
)
# General MIDI program ranges of eight instrument families
FAMILIES = {
    "piano": range(0, 8),
    "organ": range(16, 24),
    "guitar": range(24, 32),
    "bass": range(32, 40),
    "strings": range(40, 48),
    "brass": range(56, 64),
    "reed": range(64, 72),
    "pipe": range(72, 80),
}
# General MIDI percussion keys (channel 10)
DRUMS = {"kick": 36, "snare": 38, "clap": 39, "closed_hat": 42, "low_tom": 45, "crash": 49, "cowbell": 56, "claves": 75}


class MissingToolError(FileNotFoundError):
    """The Debian programs that render the sound are not installed."""


def soundfont() -> str | None:
    return next((p for p in SOUNDFONTS if Path(p).is_file()), None)


def missing_tools() -> list[str]:
    """What of espeak-ng, flite, fluidsynth and a GM soundfont this machine lacks."""
    missing = [tool for tool in ("espeak-ng", "flite", "fluidsynth") if shutil.which(tool) is None]
    if soundfont() is None:
        missing.append("a GM soundfont (" + " or ".join(SOUNDFONTS) + ")")
    return missing


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise MissingToolError(
            f"cannot render real sound, missing: {', '.join(missing)} (apt-get install {DEBIAN_PACKAGES})"
        )


def _read_16k(path: Path) -> np.ndarray:
    return load_audio(path).numpy()


def speak(text: str, voice: str, engine: str, *, speed: float = 1.0, pitch: int = 50) -> np.ndarray:
    """One utterance, 16 kHz mono. ``speed``: 1 = the voice's own rate; ``pitch``: espeak-ng's 0..99."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", voice, "-s", str(int(165 * speed)), "-p", str(pitch), "-w", str(out), text]
        else:
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1 / speed:.3f}", "-t", text, "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        return _read_16k(out)


def _midi_file(notes: list[tuple[float, float, int, int, int, int]]) -> bytes:
    """Standard MIDI file (format 0, 1 ms ticks) of ``(start s, length s, channel, program, key, velocity)``."""
    events = []
    for start, length, channel, program, key, velocity in notes:
        t0, t1 = int(start * 1000), int((start + length) * 1000)
        events.append((t0, 0, bytes([0xC0 | channel, program])))
        events.append((t0, 1, bytes([0x90 | channel, key, velocity])))
        events.append((t1, -1, bytes([0x80 | channel, key, 0])))
    events.sort(key=lambda e: (e[0], e[1]))

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            out.append((value & 0x7F) | 0x80)
        return bytes(reversed(out))

    track = bytearray(b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big"))  # 1 s per beat
    now = 0
    for time, _, message in events:
        track += varlen(time - now) + message
        now = time
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def render_midi(notes: list[tuple[float, float, int, int, int, int]], seconds: float) -> np.ndarray:
    """The notes played by fluidsynth on the soundfont, 16 kHz mono, ``seconds`` long."""
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        mid.write_bytes(_midi_file(notes))
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-F", str(wav), soundfont(), str(mid)]
        subprocess.run(cmd, check=True, capture_output=True)
        audio = _read_16k(wav)
    n = int(seconds * SAMPLE_RATE)
    return np.pad(audio, (0, max(0, n - len(audio))))[:n]


def _render_slots(make_notes: list[list[tuple]], slot: float) -> list[np.ndarray]:
    """Render many short clips in one fluidsynth call: clip ``i``'s notes shifted to slot ``i``."""
    shifted = [(start + i * slot, *rest) for i, notes in enumerate(make_notes) for start, *rest in notes]
    audio = render_midi(shifted, slot * len(make_notes))
    n = int(slot * SAMPLE_RATE)
    return [audio[i * n : (i + 1) * n] for i in range(len(make_notes))]


def _normalised(sound: np.ndarray) -> np.ndarray:
    return sound / (np.abs(sound).max() + 1e-9)


def _place(rng: np.random.Generator, sound: np.ndarray, seconds: float) -> np.ndarray:
    """``sound`` at a random offset in a clip of ``seconds`` over faint noise, at a random level."""
    n = int(seconds * SAMPLE_RATE)
    sound = sound[:n]
    clip = 0.002 * rng.standard_normal(n)
    start = int(rng.integers(0, n - len(sound) + 1))
    clip[start : start + len(sound)] += rng.uniform(0.3, 0.9) * _normalised(sound)
    return (clip / max(1.0, np.abs(clip).max())).astype(np.float32)


def _utterance(rng: np.random.Generator, text: str, voice_index: int | None = None) -> np.ndarray:
    voice, engine = VOICES[int(rng.integers(len(VOICES))) if voice_index is None else voice_index]
    return speak(text, voice, engine, speed=rng.uniform(0.8, 1.25), pitch=int(rng.integers(35, 66)))


def _instrument_notes(rng: np.random.Generator, program: int, seconds: float) -> list[tuple]:
    notes, t = [], rng.uniform(0, 0.3)
    while t < seconds - 0.4:
        length = rng.uniform(0.25, 0.9)
        notes.append((t, length, 0, program, int(rng.integers(45, 77)), int(rng.integers(60, 120))))
        t += length + rng.uniform(0.0, 0.3)
    return notes


def _drum_hits(rng: np.random.Generator, key: int, seconds: float, count: int) -> list[tuple]:
    times = np.sort(rng.uniform(0, seconds - 0.5, size=count))
    return [(float(t), 0.2, 9, 0, key, int(rng.integers(50, 127))) for t in times]


def make_probe_tasks(
    out_dir: str | Path, *, per_class: tuple[int, int, int] = (12, 4, 8), seed: int = 100
) -> list[Path]:
    """Four HEAR scene tasks (trainvaltest, multiclass): ``speech_commands`` (word, 8 classes),
    ``speaker`` (voice, 8), ``instrument_family`` (8) and ``drum_hits`` (8, over louder instrument
    phrases). ``per_class`` counts the clips per label in train, valid and test."""
    require_tools()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    splits = ("train", "valid", "test")
    counts = dict(zip(splits, per_class, strict=True))

    def task(name: str, labels: list[str], seconds: float, make: Callable[[str, int], list[np.ndarray]]) -> Path:
        files = {split: {} for split in splits}
        for label in labels:
            clips = make(label, sum(per_class))
            for split in splits:
                for i in range(counts[split]):
                    files[split][f"{label}_{i:03d}.wav"] = (clips.pop(), [label])
        return write_task(out_dir / name, scene_metadata(name, "multiclass", list(splits), seconds), labels, files)

    def commands(label: str, n: int) -> list[np.ndarray]:
        return [_place(rng, _utterance(rng, label), 1.5) for _ in range(n)]

    def speakers(label: str, n: int) -> list[np.ndarray]:
        index = [v for v, _ in VOICES].index(label)
        return [_place(rng, _utterance(rng, str(rng.choice(SPEAKER_WORDS)), index), 1.5) for _ in range(n)]

    def instruments(label: str, n: int) -> list[np.ndarray]:
        programs = list(FAMILIES[label])
        sounds = _render_slots([_instrument_notes(rng, int(rng.choice(programs)), 2.0) for _ in range(n)], 2.5)
        return [_place(rng, s[: 2 * SAMPLE_RATE], 2.0) for s in sounds]

    def drums(label: str, n: int) -> list[np.ndarray]:
        # over a louder instrument phrase, so the clip's average spectrum is mostly the background's
        hits = _render_slots([_drum_hits(rng, DRUMS[label], 2.0, int(rng.integers(1, 4))) for _ in range(n)], 2.5)
        backgrounds = _render_slots([_instrument_notes(rng, int(rng.integers(0, 96)), 2.0) for _ in range(n)], 2.5)
        return [
            _place(
                rng, _normalised(h[: 2 * SAMPLE_RATE]) + rng.uniform(1.0, 2.0) * _normalised(b[: 2 * SAMPLE_RATE]), 2.0
            )
            for h, b in zip(hits, backgrounds, strict=True)
        ]

    return [
        task("speech_commands", list(COMMAND_WORDS), 1.5, commands),
        task("speaker", [v for v, _ in VOICES], 1.5, speakers),
        task("instrument_family", list(FAMILIES), 2.0, instruments),
        task("drum_hits", list(DRUMS), 2.0, drums),
    ]


def make_rendered_corpus(out_dir: str | Path, *, n_clips: int = 300, seconds: float = 3.0, seed: int = 0) -> list[Path]:
    """Unlabelled clips, a third each: sentences of corpus words by random voices, instrument
    phrases of random programs (any of the 128), drum patterns; written as 16 kHz wav."""
    require_tools()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_speech = n_clips // 3
    n_music = (n_clips - n_speech) // 2
    clips = [
        _place(rng, _utterance(rng, " ".join(rng.choice(CORPUS_WORDS, size=int(rng.integers(2, 6))))), seconds)
        for _ in range(n_speech)
    ]
    phrases = [_instrument_notes(rng, int(rng.integers(0, 128)), seconds) for _ in range(n_music)]
    clips += _render_slots(phrases, seconds + 0.5)
    kits = [
        [hit for key in rng.choice(list(DRUMS.values()), size=3) for hit in _drum_hits(rng, int(key), seconds, 3)]
        for _ in range(n_clips - n_speech - n_music)
    ]
    clips += _render_slots(kits, seconds + 0.5)
    paths = []
    for i, clip in enumerate(clips):
        path = out_dir / f"rendered_{i:05d}.wav"
        soundfile.write(str(path), _place(rng, clip[: int(seconds * SAMPLE_RATE)], seconds), SAMPLE_RATE)
        paths.append(path)
    return paths


DRUM_EVENT_LABELS = ("kick", "snare", "closed_hat")
DRUM_EVENT_MS = 150.0  # a hit's event: its onset and the next 150 ms (the scores look at onsets)


def make_drum_event_task(
    out_dir: str | Path, *, counts: tuple[int, int, int] = (64, 16, 24), seconds: float = 4.0, seed: int = 300
) -> Path:
    """A HEAR event task of rendered sound: kick, snare and closed hi-hat hits (2-6 per clip, at
    random times, random velocity) over a louder instrument phrase of a random General MIDI program;
    each hit an event from its onset for 150 ms."""
    require_tools()
    rng = np.random.default_rng(seed)
    splits = ("train", "valid", "test")
    n = int(seconds * SAMPLE_RATE)
    files: dict[str, dict] = {}
    for split, count in zip(splits, counts, strict=True):
        hits = []
        for k in rng.integers(2, 7, size=count):
            times, labels = np.sort(rng.uniform(0.05, seconds - 0.4, size=k)), rng.choice(DRUM_EVENT_LABELS, size=k)
            velocities = rng.integers(70, 127, size=k)
            notes = zip(times, labels, velocities, strict=True)
            hits.append([(t, 0.2, 9, 0, DRUMS[lab], int(v)) for t, lab, v in notes])
        drums = _render_slots(hits, seconds + 0.5)
        music = _render_slots([_instrument_notes(rng, int(rng.integers(0, 96)), seconds) for _ in range(count)],
                              seconds + 0.5)
        files[split] = {}
        for i, (notes, d, m) in enumerate(zip(hits, drums, music, strict=True)):
            clip = _normalised(d[:n]) + rng.uniform(0.5, 1.5) * _normalised(m[:n]) + 0.002 * rng.standard_normal(n)
            events = [
                {"label": label, "start": 1000 * t, "end": 1000 * t + DRUM_EVENT_MS}
                for t, _, _, _, key, _ in notes
                for label in DRUM_EVENT_LABELS
                if DRUMS[label] == key
            ]
            files[split][f"clip_{i:03d}.wav"] = ((0.9 * clip / np.abs(clip).max()).astype(np.float32), events)
    name = "drum_events"
    metadata = event_metadata(name, list(splits), seconds, {"median_filter_ms": [0, 120], "min_duration": [0]})
    return write_task(Path(out_dir) / name, metadata, list(DRUM_EVENT_LABELS), files)
