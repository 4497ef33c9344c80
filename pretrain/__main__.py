"""Command line: ``python -m pretrain {init,inspect,embed} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pretrain.audio_io import load_audio
from pretrain.checkpoint import load_encoder, write_random_checkpoint
from pretrain.encoder import ARCHS
from pretrain.extractor import ATSTFeatureExtractor


def _init(args: argparse.Namespace) -> None:
    path = write_random_checkpoint(args.out, args.arch, seed=args.seed, train_len=args.train_len)
    print(f"wrote randomly initialised {args.arch} encoder to {path}")


def _inspect(args: argparse.Namespace) -> None:
    encoder, spec = load_encoder(args.checkpoint)
    n_params = sum(p.numel() for p in encoder.parameters())
    print(
        f"{args.checkpoint}: layout={spec.layout} arch={spec.arch} width={spec.embed_dim} depth={spec.depth} "
        f"heads={spec.num_heads} train_len={spec.train_len}s params={n_params / 1e6:.1f}M"
    )


def _embed(args: argparse.Namespace) -> None:
    model = ATSTFeatureExtractor.from_checkpoint(args.checkpoint)
    n_blocks = args.n_blocks or model.encoder.depth
    rows = []
    with torch.no_grad():
        for path in args.audio:
            wav = load_audio(path)
            emb = model.scene_embeddings([wav], n_blocks=n_blocks)[0]
            rows.append(emb.numpy())
            print(
                f"{path}: {len(wav) / 16000:.2f} s -> scene embedding {tuple(emb.shape)}, "
                f"mean {float(emb.mean()):+.4f}, std {float(emb.std()):.4f}"
            )
    if args.out:
        np.save(args.out, np.stack(rows))
        print(f"saved {len(rows)} embeddings to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a randomly initialised checkpoint")
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=sorted(ARCHS), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-len", type=float, default=6.0)
    p.set_defaults(run=_init)
    p = sub.add_parser("inspect", help="print what a checkpoint holds")
    p.add_argument("checkpoint", type=Path)
    p.set_defaults(run=_inspect)
    p = sub.add_parser("embed", help="scene embeddings of audio files")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("audio", type=Path, nargs="+")
    p.add_argument("--n-blocks", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="save the embeddings as .npy")
    p.set_defaults(run=_embed)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
