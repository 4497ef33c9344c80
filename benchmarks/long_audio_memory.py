"""Peak memory and time of the scene embedding of a 1-hour clip (whole process, torch included).

    .venv/bin/python benchmarks/long_audio_memory.py CHECKPOINT [--minutes 60]

Prints the process's peak resident memory before and after the embedding, and the time taken
(tests/test_long_audio.py asserts < 2 GB for the small model).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import atst_hear


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    model = atst_hear.load_model(args.checkpoint)
    before = peak_mb()
    audio = 0.1 * torch.randn(1, int(args.minutes * 60 * 16000), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    emb = atst_hear.get_scene_embeddings(audio, model)
    seconds = time.perf_counter() - start
    print(
        f"{args.minutes:g} min clip -> {tuple(emb.shape)} in {seconds:.1f} s; peak RSS {before:.0f} MB after "
        f"loading, {peak_mb():.0f} MB after embedding (audio itself {audio.numel() * 4 / 2**20:.0f} MB)"
    )


if __name__ == "__main__":
    main()
