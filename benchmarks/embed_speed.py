"""Embedding throughput of the package against a plain re-statement of the official code.

    .venv/bin/python benchmarks/embed_speed.py [--repeats 7] [--families clip frame] [--archs small base]
        [--out FILE.md]

For both families (ATST-Clip, ATST-Frame), the small and base encoders (random weights) and two
workloads (a batch of 8 x 10 s clips, one 60 s clip) it first checks that the package and the
reference give the same scene and timestamp features (1e-4 relative), then times both alternately
in the same process (the median of --repeats runs each, so that the shared machine's drifts hit
both): seconds of audio per second, the speed-up, and the achieved GFLOP/s of the useful encoder
work (the FLOPs of the official computation) against the machine's float32 matrix-multiply rate
measured at the start of the run. The reference (pretrain/reference.py) is written the way
the official code works: torchaudio transforms per clip, explicit softmax attention with an
additive mask, one chunk at a time in a Python loop, the final norm applied to each block; for
Frame scene embeddings, atstframe/downstream's linear-evaluation loop. Runs in the harness stack
(the reference uses torchaudio).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from measure import machine, write_report

from pretrain import ATSTEncoder, ATSTFeatureExtractor
from pretrain.reference import (
    frame_linear_eval,
    intermediate_layers_chunks,
    layer_features_chunks,
    official_mel,
    pad_mels,
)

WORKLOADS = {"8 x 10 s": (8, 10.0), "1 x 60 s": (1, 60.0)}


def matmul_gflops(size: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))  # the machine's rate: best, not median
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_median(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so slow drifts of the machine hit both."""
    times_first, times_second = [], []
    for _ in range(repeats):
        times_first.append(_timed(first))
        times_second.append(_timed(second))
    return statistics.median(times_first), statistics.median(times_second)


def encoder_flops(enc: ATSTEncoder, token_counts: list[int]) -> float:
    """Multiply-adds x 2 of patch embedding and blocks for chunks of the given token counts."""
    d, total = enc.embed_dim, 0.0
    for tokens in token_counts:
        n = tokens + enc.n_prefix
        total += 2 * tokens * 256 * d + enc.depth * (24 * n * d * d + 4 * n * n * d)
    return total


def scene_chunk_tokens(lengths: list[int], chunk_frames: int) -> list[int]:
    tokens = []
    for length in lengths:
        for i in range(length // chunk_frames + 1):
            left = length - i * chunk_frames
            if left > 0 and (i == 0 or left > chunk_frames // 2):
                tokens.append(min(left, chunk_frames) // 4)
    return tokens


@torch.no_grad()
def measure(model: ATSTFeatureExtractor, wavs: list[torch.Tensor], repeats: int):
    """(features, package time, reference time, useful FLOPs) for scene and timestamp features."""
    enc = model.encoder

    def ref_mels():
        return pad_mels([official_mel(w) for w in wavs])

    def ref_scene():
        mel, length = ref_mels()
        if model.family == "frame":
            return frame_linear_eval(enc, mel, length, enc.depth, model.scene_chunk_frames)
        return intermediate_layers_chunks(enc, mel, length, enc.depth, model.scene_chunk_frames)

    def ref_tokens():
        mel, length = ref_mels()
        return layer_features_chunks(enc, mel, length, enc.depth, model.chunk_tokens)

    def ours_scene():
        return model.scene_embeddings(wavs, n_blocks=enc.depth)

    def ours_tokens():
        return model.layer_features(wavs, n_blocks=enc.depth)[0].permute(2, 0, 1, 3)  # a view: the reference's layout

    lengths = [w.shape[0] // 160 + 1 for w in wavs]
    token_chunks = [min(model.chunk_tokens, n // 4 - s) for n in lengths for s in range(0, n // 4, model.chunk_tokens)]
    flops = {
        "scene": encoder_flops(enc, scene_chunk_tokens(lengths, model.scene_chunk_frames)),
        "timestamp": encoder_flops(enc, token_chunks),
    }
    results = []
    for kind, ours, ref in (("scene", ours_scene, ref_scene), ("timestamp", ours_tokens, ref_tokens)):
        a, b = ours(), ref()
        err = float((a - b).abs().max() / b.abs().max())
        if err > 1e-4:
            raise SystemExit(f"{kind}: package and reference differ ({err:.2e})")
        t_ours, t_ref = interleaved_median(ours, ref, repeats)
        results.append((kind, t_ours, t_ref, flops[kind]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--families", nargs="+", default=["clip", "frame"])
    parser.add_argument("--archs", nargs="+", default=["small", "base"])
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args()

    torch.manual_seed(0)
    peak = matmul_gflops()
    lines = [
        f"Machine: {machine()}, {torch.get_num_threads()} threads; float32 matmul (2048^3): {peak:.1f} GFLOP/s",
        "",
        "| family | model | workload | features | package (s audio/s) | reference (s audio/s) | speed-up "
        "| package GFLOP/s | % of matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    for family, arch in ((f, a) for f in args.families for a in args.archs):
        model = ATSTFeatureExtractor(ATSTEncoder.from_arch(arch, family=family)).eval()
        for name, (batch, seconds) in WORKLOADS.items():
            g = torch.Generator().manual_seed(1)
            wavs = list(0.1 * torch.randn(batch, int(seconds * 16000), generator=g))
            for kind, t_ours, t_ref, flops in measure(model, wavs, args.repeats):
                gflops = flops / t_ours / 1e9
                row = (
                    f"| {family} | {arch} | {name} | {kind} | {batch * seconds / t_ours:.1f} "
                    f"| {batch * seconds / t_ref:.1f} "
                    f"| {t_ref / t_ours:.2f}x | {gflops:.1f} | {100 * gflops / peak:.0f}% |"
                )
                lines.append(row)
                print(row, flush=True)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
