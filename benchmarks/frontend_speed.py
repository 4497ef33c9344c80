"""Log-mel front end: this package's plain-torch one against torchaudio's transforms.

    .venv/bin/python benchmarks/frontend_speed.py [--out FILE.md]

Run in the harness stack (it has torchaudio). Both compute the official transform
(MelSpectrogram -> AmplitudeToDB with a per-clip top_db floor -> min-max scaling); outputs are
checked equal first. torchaudio's is the official code's way: one transform per ``(1, 1, n)``
clip ("single"), or one call on a ``(B, 1, 1, n)`` batch of equal-length clips ("batch", 4-D
so the floor stays per clip). The package's: ``LogMelFrontEnd.batch`` (each clip at its own
length, STFT in one-minute blocks, padded in the mel domain), and for equal-length batches
``equal_length`` (the pretraining path). The implementations alternate run by run; each figure
is the median of its runs (the machine is shared), default threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from measure import machine, write_report

from pretrain.model.frontend import DB_MAX, DB_MIN, LogMelFrontEnd

DURATIONS = (("1 s", 1.0), ("10 s", 10.0), ("10 min", 600.0))
WORKLOADS = [(name, seconds, batch) for name, seconds in DURATIONS for batch in (1, 8)]
AUDIO_PER_WORKLOAD = 2400.0  # seconds of audio timed per implementation and workload (at least 5 runs)


def torchaudio_frontend():
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=1024, win_length=1024, hop_length=160, f_min=60, f_max=7800, n_mels=64
    )
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80)

    def run(wavs: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, 64, T)
        x = wavs[:, None, None] if wavs.shape[0] > 1 else wavs[:, None]
        db = to_db(mel(x))
        return ((db - DB_MIN) / (DB_MAX - DB_MIN) * 2 - 1).reshape(wavs.shape[0], 64, -1)

    return run


def median_times(fns: dict, wavs: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions alternating run by run."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(wavs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    ours = LogMelFrontEnd()
    theirs = torchaudio_frontend()
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, seconds, batch in WORKLOADS:
        wavs = 0.1 * torch.randn(batch, int(seconds * 16000), generator=g)
        with torch.no_grad():
            reference = theirs(wavs)
            mine, _ = ours.batch(list(wavs))
            error = float((mine - reference).abs().max() / reference.abs().max())
            assert error < 1e-5, f"{name} x{batch}: front ends differ by {error}"
            fns = {"torchaudio": theirs, "batch": lambda w: ours.batch(list(w))}
            if batch > 1:
                fns["equal_length"] = ours.equal_length
            repeats = max(5, int(AUDIO_PER_WORKLOAD / (seconds * batch)))
            t = median_times(fns, wavs, repeats)
            audio = seconds * batch
            row = f"| {name} x {batch} | {audio / t['torchaudio']:.0f} | {audio / t['batch']:.0f} "
            row += f"| {t['torchaudio'] / t['batch']:.2f}x "
            if batch > 1:
                row += f"| {audio / t['equal_length']:.0f} | {t['torchaudio'] / t['equal_length']:.2f}x "
            else:
                row += "| | "
            rows.append(row + f"| {error:.1e} |")
    lines = [
        f"Machine: {machine()}.",
        "Audio seconds per second (higher is faster).",
        "",
        "| clips | torchaudio | package `batch` | vs torchaudio | package `equal_length` | vs torchaudio "
        "| max rel. difference |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))
    write_report(lines, args.out)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
