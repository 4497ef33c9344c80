"""Resampling of training data to 16 kHz: libsoxr (this package) against torchaudio's ``Resample``.

    .venv/bin/python benchmarks/resample_quality.py [--out FILE.md]

Run in the harness stack (it has torchaudio; the package itself does not need it). For each
source rate, on the same signals:

* aliasing: a 6 s linear sweep from 20 Hz to the source's Nyquist frequency. Everything the
  sweep plays above 8 kHz must vanish; the figure is the output energy while the input sweeps
  above 8.4 kHz (clear of the transition band), in dB relative to the energy of the same
  stretch of input. Lower is better.
* passband: tones at 100 Hz .. 7.2 kHz; the largest gain error of the output, in dB.
* speed: seconds of audio resampled per second, one thread, 60 s of noise, after one untimed
  call (torchaudio's kernel is built once per rate, as the package used to cache it).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import soxr
import torch
from measure import machine, write_report

TARGET = 16_000
RATES = (8_000, 22_050, 44_100, 48_000)
TONES = (100.0, 1_000.0, 4_000.0, 6_000.0, 7_200.0)
ALIAS_FROM = 8_400.0
SWEEP_SECONDS = 6.0
EDGE = 0.05  # seconds dropped at each end of a measurement (filter warm-up)


def soxr_resample(x: np.ndarray, rate: int) -> np.ndarray:
    from pretrain.model.audio_io import resample

    return resample(x.astype(np.float32), rate)


def torchaudio_resampler(rate: int):
    import torchaudio

    transform = torchaudio.transforms.Resample(rate, TARGET)  # defaults: sinc_interp_hann, width 6, rolloff 0.99
    return lambda x: transform(torch.from_numpy(x.astype(np.float32))).numpy()


def sweep(rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear sweep 20 Hz -> rate / 2 and its instantaneous frequency per input sample."""
    t = np.arange(int(SWEEP_SECONDS * rate)) / rate
    f0, f1 = 20.0, rate / 2
    freq = f0 + (f1 - f0) * t / SWEEP_SECONDS
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * SWEEP_SECONDS))
    return 0.5 * np.sin(phase), freq


def alias_db(resample, rate: int) -> float | None:
    """Output energy where the input sweeps above ALIAS_FROM, relative to that input's energy."""
    if rate / 2 <= ALIAS_FROM:
        return None  # nothing above the new Nyquist frequency to alias
    x, freq = sweep(rate)
    y = resample(x)
    above = freq > ALIAS_FROM
    start = np.argmax(above) / rate + EDGE
    stop = SWEEP_SECONDS - EDGE
    out = y[int(start * TARGET) : int(stop * TARGET)]
    inp = x[int(start * rate) : int(stop * rate)]
    return 10 * np.log10(np.mean(out**2) / np.mean(inp**2) + 1e-30)


def passband_error_db(resample, rate: int) -> float:
    worst = 0.0
    for f in TONES:
        if f >= rate / 2:
            continue
        t = np.arange(int(1.0 * rate)) / rate
        y = resample(0.5 * np.sin(2 * np.pi * f * t))
        core = y[int(EDGE * TARGET) : -int(EDGE * TARGET)]
        gain = np.sqrt(2 * np.mean(core**2)) / 0.5
        worst = max(worst, abs(20 * np.log10(gain)))
    return worst


def speed(resample, rate: int) -> float:
    x = np.random.default_rng(0).standard_normal(60 * rate).astype(np.float32) * 0.1
    resample(x[:rate])  # untimed: kernels, caches
    start = time.perf_counter()
    resample(x)
    return 60.0 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    rows = []
    for rate in RATES:
        methods = {
            f"soxr {soxr.__version__} (HQ, this package)": lambda x, r=rate: soxr_resample(x, r),
            "torchaudio Resample (previous)": torchaudio_resampler(rate),
        }
        rates = {name: speed(fn, rate) for name, fn in methods.items()}
        reference = rates["torchaudio Resample (previous)"]
        for name, fn in methods.items():
            alias = alias_db(fn, rate)
            alias_text = "n/a (upsampling)" if alias is None else f"{alias:.1f} dB"
            rows.append(
                f"| {rate} Hz | {name} | {alias_text} | {passband_error_db(fn, rate):.3f} dB "
                f"| {rates[name]:.0f}x | {rates[name] / reference:.2f}x |"
            )
    lines = [
        f"Machine: {machine()} (1 thread used).",
        "",
        "| source rate | resampler | sweep energy above 8.4 kHz after resampling | passband gain error (to 7.2 kHz) "
        "| speed (audio s / s) | vs torchaudio |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
