"""Peak memory and time of the scene embedding of a 1-hour clip (whole process, torch included).

    .venv/bin/python benchmarks/long_audio_memory.py CHECKPOINT [--minutes 60] [--json]

Prints the process's peak resident memory before and after the embedding, and the time taken
(tests/test_long_audio.py runs it and asserts < 2 GB for the small model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import machine, peak_rss_mb  # noqa: E402

import atst_hear  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    model = atst_hear.load_model(args.checkpoint)
    before = peak_rss_mb()
    audio = 0.1 * torch.randn(1, int(args.minutes * 60 * 16000), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    emb = atst_hear.get_scene_embeddings(audio, model)
    seconds = time.perf_counter() - start
    if not bool(torch.isfinite(emb).all()):
        raise SystemExit("the embedding is not finite")
    figures = {"minutes": args.minutes, "shape": list(emb.shape), "seconds": seconds, "peak_mb_loaded": before,
               "peak_mb": peak_rss_mb(), "audio_mb": audio.numel() * 4 / 2**20}
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{machine()}\n{args.minutes:g} min clip -> {tuple(emb.shape)} in {seconds:.1f} s; peak RSS "
        f"{before:.0f} MB after loading, {figures['peak_mb']:.0f} MB after embedding "
        f"(audio itself {figures['audio_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
