"""Command line: ``python -m pretrain COMMAND ...`` (also the ``atst-pretrain`` console script).

train    run or resume pretraining: ATST-Clip (presets small / base / tiny) or ATST-Frame
         (--family frame: frame-small / frame-base / frame-tiny), YAML, flags
check    scan a dataset and report unreadable, empty, short or silent files
finetune fine-tune (or --freeze: linear-probe) a checkpoint on a HEAR task folder, official recipe
manifest a manifest from AudioSet's segment CSVs and the downloaded files
shard    write a folder or manifest as WebDataset tar shards with an index (resumable)
plot     draw a run's curves (and its online probe's) to PNGs
export   write a checkpoint's teacher encoder alone as safetensors
synth    write the built-in synthetic corpus (--rendered: real sound from espeak-ng, flite, fluidsynth)
probe-tasks  write the rendered-sound HEAR tasks of the online probe (--probe)
demo     rendered corpus -> tiny pretraining with the probe -> hear-validator -> embeddings
init     write a randomly initialised encoder checkpoint (Clip or Frame)
inspect  what a checkpoint holds: family, layout, shape, crop, step, student/optimizer/...
embed    scene embeddings of audio files
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pretrain.extras import INSTALL, extras_named
from pretrain.model.audio_input import AudioInputError
from pretrain.model.audio_io import load_audio
from pretrain.model.checkpoint import inspect_checkpoint, write_random_checkpoint
from pretrain.model.encoder import ARCHS
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.runs.divergence import TrainingDivergedError
from pretrain.training import config as run_config


def _init(args: argparse.Namespace) -> None:
    path = write_random_checkpoint(
        args.out, args.arch, family=args.family, seed=args.seed, crop_seconds=args.crop_seconds
    )
    print(f"wrote randomly initialised ATST-{args.family.capitalize()} {args.arch} encoder to {path}")


def _inspect(args: argparse.Namespace) -> None:
    print(inspect_checkpoint(args.checkpoint).describe())


def _models(args: argparse.Namespace) -> None:
    from pretrain.model.registry import cache_dir, cached, registry

    print(f"cache: {cache_dir()} (set ATST_CACHE to move it)")
    for name, entry in sorted(registry().items()):
        where = cached(name)
        state = f"cached at {where}" if where else "not downloaded"
        print(f"{name:18s} {entry.size / 1e6:8,.1f} MB  {entry.description}  [{state}]")


def _download(args: argparse.Namespace) -> None:
    from pretrain.model.registry import download

    for name in args.names:
        print(f"{name}: {download(name)}")


def _embed(args: argparse.Namespace) -> None:
    model = ATSTFeatureExtractor.from_checkpoint(args.checkpoint)
    n_blocks = args.n_blocks or model.encoder.depth
    rows = []
    with torch.no_grad():
        for path in args.audio:
            wav = load_audio(path)
            try:
                emb = model.scene_embeddings([wav], n_blocks=n_blocks)[0]
            except AudioInputError as err:
                raise AudioInputError(f"{path}: {err}") from None
            rows.append(emb.numpy())
            print(
                f"{path}: {len(wav) / 16000:.2f} s -> scene embedding {tuple(emb.shape)}, "
                f"mean {float(emb.mean()):+.4f}, std {float(emb.std()):.4f}"
            )
    if args.out:
        np.save(args.out, np.stack(rows))
        print(f"saved {len(rows)} embeddings to {args.out}")


def _train(args: argparse.Namespace) -> None:
    from pretrain.training.train import train

    config = run_config.from_arguments(args)
    if not config.data:
        raise ValueError("--data is required: a folder of audio files, a CSV/TSV manifest, or tar shards")
    final = train(config)
    print(f"final checkpoint: {final}")


def _check(args: argparse.Namespace) -> None:
    from pretrain.training.data import scan_dataset

    report = scan_dataset(args.data, crop_seconds=args.crop_seconds)
    print(f"{args.data}: {report.files} files, {report.readable} readable, {report.seconds / 3600:.2f} h")
    print(f"sample rates (resampled to 16 kHz): {dict(sorted(report.sample_rates.items()))}")
    print(f"shorter than {args.crop_seconds} s (zero-padded): {report.shorter_than_crop}; silent: {report.silent}")
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    print(f"{len(report.problems)} files will be skipped")
    if report.readable == 0:
        raise SystemExit(1)


def _finetune(args: argparse.Namespace) -> None:
    from pretrain.finetune import recipe
    from pretrain.finetune.run import finetune

    report = finetune(args.checkpoint, args.task, args.out, recipe.from_arguments(args))
    print(f"{report['task']} ({report['split_mode']}), {args.checkpoint}:")
    for mode in ("frozen", "finetune"):
        if mode in report:
            r = report[mode]
            folds = ", ".join(f"{x['round']} {x['test_scores'][r['metric']]:.4f}" for x in r["rounds"])
            print(f"  {mode:9s} test {r['metric']} {r['test_mean']:.4f} +- {r['test_std']:.4f}  ({folds})")
            shown = [k for k in r["test_means"] if k != r["metric"] and not k.endswith(("_precision", "_recall"))]
            others = {k: r["test_means"][k] for k in shown}
            if others:  # event tasks: the error rate and PSDS beside the onset F-measure
                print("  " + " " * 9 + " test " + ", ".join(f"{k} {v:.4f}" for k, v in others.items()))
    print(f"scores: {Path(args.out) / 'scores.json'}")


def _manifest(args: argparse.Namespace) -> None:
    from pretrain.training.audioset import audioset_manifest

    report = audioset_manifest(args.audioset_csv, args.audio_dir, args.out)
    print(f"{args.out}: {report.found} of {report.segments} segments have a file ({len(report.missing)} missing)")
    if report.unmatched:
        print(f"{report.unmatched} audio files under {args.audio_dir} belong to none of the segments")


def _shard(args: argparse.Namespace) -> None:
    from pretrain.training.shard_writer import write_shards

    index = write_shards(
        args.source, args.out, shard_size=args.shard_size, flac16k=args.flac16k, seed=args.seed, jobs=args.jobs
    )
    print(
        f"{args.out}: {len(index['shards'])} shards, {index['samples']} samples, "
        f"{index['seconds'] / 3600:.2f} h ({index['encoding']})"
    )
    for problem in index["skipped"]:
        print(f"SKIPPED {problem['path']}: {problem['reason']}")
    print(f"{len(index['skipped'])} files skipped; index: {Path(args.out) / 'index.json'}")


def _plot(args: argparse.Namespace) -> None:
    from pretrain.runs.plot import plot_run
    from pretrain.training.probe import plot_probe

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    probe = plot_probe(args.run_dir)
    if probe:
        print(f"wrote {probe}")


def _export(args: argparse.Namespace) -> None:
    from pretrain.training.train import export_teacher

    print(f"wrote {export_teacher(args.checkpoint, args.out)}")


def _synth(args: argparse.Namespace) -> None:
    from pretrain.training.rendered_sound import make_rendered_corpus
    from pretrain.training.synthetic import make_corpus

    make = make_rendered_corpus if args.rendered else make_corpus
    paths = make(args.out, n_clips=args.clips, seed=args.seed)
    print(f"wrote {len(paths)} {'rendered' if args.rendered else 'synthetic'} clips to {args.out}")


def _probe_tasks(args: argparse.Namespace) -> None:
    from pretrain.training.rendered_sound import make_probe_tasks

    tasks = make_probe_tasks(args.out, per_class=tuple(args.per_class), seed=args.seed)
    print(f"wrote {len(tasks)} HEAR tasks: --probe {','.join(map(str, tasks))}")


def _demo(args: argparse.Namespace) -> None:
    from pretrain.runs.plot import plot_run
    from pretrain.training import rendered_sound
    from pretrain.training.probe import plot_probe
    from pretrain.training.synthetic import make_corpus
    from pretrain.training.train import train

    validator = Path(sys.executable).parent / "hear-validator"
    if not validator.is_file():
        raise FileNotFoundError(
            f"the demo checks its checkpoint with hear-validator, not found beside {sys.executable}: "
            f"{INSTALL['hear']}"
        )
    out = Path(args.out)
    missing = rendered_sound.missing_tools()
    if missing:  # the corpus stays synthetic and the run has no probe where the Debian tools are absent
        corpus = out / "synthetic_corpus"
        print(f"== 1/5 synthetic corpus in {corpus} (no real sound: missing {', '.join(missing)})")
        clips = make_corpus(corpus, n_clips=args.clips, seed=0)
        probe = []
    else:
        corpus = out / "rendered_corpus"
        print(f"== 1/5 corpus of real sound in {corpus}: espeak-ng/flite speech, fluidsynth instruments and drums")
        clips = rendered_sound.make_rendered_corpus(corpus, n_clips=args.clips, seed=0)
        print("== 2/5 held-out probe tasks: spoken commands, speaker, instrument family, drum hits")
        shutil.rmtree(out / "probe_tasks", ignore_errors=True)  # a demo run again draws them again
        probe = rendered_sound.make_probe_tasks(out / "probe_tasks", per_class=(8, 2, 6), seed=100)
    preset = run_config.RECIPES[args.family].cpu_preset
    print(f"== 3/5 tiny ATST-{args.family.capitalize()} pretraining on the CPU ({args.steps} steps, preset {preset})")
    flags = ["--preset", preset, "--data", str(corpus), "--run-dir", str(out / "run"), "--max-steps", str(args.steps)]
    if probe:
        flags += ["--probe", ",".join(map(str, probe))]
    final = train(run_config.from_arguments(_parser().parse_args(["train", *flags])))
    print(f"curves: {plot_run(out / 'run')}")
    if probe:
        print(f"online probe (k-NN / linear accuracy, effective rank): {plot_probe(out / 'run')}")
    print("== 4/5 hear-validator on the new checkpoint")
    result = subprocess.run(
        [str(validator), "atst_hear", "-m", str(final), "-d", "cpu"], capture_output=True, text=True
    )
    print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:])
    if result.returncode:
        raise SystemExit(result.returncode)
    print("== 5/5 embeddings of a few clips")
    _embed(argparse.Namespace(checkpoint=final, audio=clips[:4], n_blocks=None, out=out / "embeddings.npy"))


def _parser() -> argparse.ArgumentParser:
    from pretrain.finetune import recipe

    parser = argparse.ArgumentParser(
        prog="python -m pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run or resume pretraining")
    run_config.add_arguments(p)
    p.set_defaults(run=_train)
    p = sub.add_parser("check", help="scan a dataset for problems")
    p.add_argument("data", help="a folder of audio files or a CSV/TSV manifest with a 'path' column")
    p.add_argument(
        "--crop-seconds", "--train-len", type=float, default=6.0, help="the crop length of the run (seconds; clips "
        "shorter than it are counted as zero-padded)"
    )
    p.set_defaults(run=_check)
    p = sub.add_parser("finetune", help="fine-tune on a HEAR task folder (official recipe), or --freeze")
    recipe.add_arguments(p)
    p.set_defaults(run=_finetune)
    p = sub.add_parser("manifest", help="manifest from AudioSet's segment CSVs and downloaded files")
    p.add_argument("--audioset-csv", nargs="+", required=True, help="official segments CSVs")
    p.add_argument("--audio-dir", type=Path, required=True, help="where the downloader put the files")
    p.add_argument("--out", type=Path, required=True, help="the manifest to write (CSV)")
    p.set_defaults(run=_manifest)
    p = sub.add_parser("shard", help="write a dataset as WebDataset tar shards")
    p.add_argument("source", help="a folder of audio files or a CSV/TSV manifest with a 'path' column")
    p.add_argument("out", type=Path, help="folder of the shards and their index.json")
    p.add_argument("--shard-size", type=int, required=True, help="samples per shard")
    p.add_argument("--flac16k", action="store_true", help="re-encode as 16 kHz mono FLAC (default: original bytes)")
    p.add_argument("--seed", type=int, default=0, help="seeds the one shuffle of the file list")
    p.add_argument("--jobs", type=int, default=1, help="shards written in parallel processes")
    p.set_defaults(run=_shard)
    p = sub.add_parser("plot", help="plot a run's curves")
    p.add_argument("run_dir", type=Path, help="the run folder (--run-dir of train)")
    p.add_argument("--out", type=Path, default=None, help="the curves' PNG (default: RUN_DIR/curves.png)")
    p.set_defaults(run=_plot)
    p = sub.add_parser("export", help="teacher encoder -> safetensors")
    p.add_argument("checkpoint", type=Path, help="any checkpoint the package reads")
    p.add_argument("out", type=Path, help="the .safetensors file to write")
    p.set_defaults(run=_export)
    p = sub.add_parser("synth", help="write the synthetic corpus")
    p.add_argument("out", type=Path, help="folder to write the clips to")
    p.add_argument("--clips", type=int, default=64, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="seeds what the clips hold")
    p.add_argument("--rendered", action="store_true", help="real sound: espeak-ng/flite speech, fluidsynth music")
    p.set_defaults(run=_synth)
    p = sub.add_parser("probe-tasks", help="write the four rendered-sound HEAR tasks for --probe")
    p.add_argument("out", type=Path, help="folder to write the four task folders to")
    p.add_argument(
        "--per-class", type=int, nargs=3, default=[12, 4, 8], metavar=("TRAIN", "VALID", "TEST"),
        help="clips per label in each split",
    )
    p.add_argument("--seed", type=int, default=100, help="seeds what the clips hold")
    p.set_defaults(run=_probe_tasks)
    p = sub.add_parser("demo", help="rendered corpus, tiny pretraining with the probe, hear-validator, embeddings")
    p.add_argument(
        "--family", "--method", dest="family", choices=run_config.FAMILY_NAMES, default="clip",
        help="ATST-Clip or ATST-Frame (--method: the old name)",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="folder of everything the demo writes")
    p.add_argument("--clips", type=int, default=96, help="clips in the pretraining corpus")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps of the tiny pretraining run")
    p.set_defaults(run=_demo)
    p = sub.add_parser("init", help="write a randomly initialised checkpoint")
    p.add_argument("out", type=Path, help="the checkpoint to write")
    p.add_argument("--arch", choices=sorted(ARCHS), default="small", help="encoder size")
    p.add_argument("--family", choices=run_config.FAMILY_NAMES, default="clip", help="ATST-Clip or ATST-Frame")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights")
    p.add_argument("--crop-seconds", type=float, default=None, help="crop length stored in the file (seconds; "
                   "default: the family's, Clip 6, Frame 10)")
    p.set_defaults(run=_init)
    p = sub.add_parser("models", help="the registered official checkpoints: names, sizes, whether cached")
    p.set_defaults(run=_models)
    p = sub.add_parser("download", help="fetch registered checkpoints into the cache ahead of time")
    p.add_argument("names", nargs="+", help="registered names (python -m pretrain models lists them)")
    p.set_defaults(run=_download)
    p = sub.add_parser("inspect", help="what a checkpoint holds: family, layout, shape, step, everything else")
    p.add_argument("checkpoint", type=Path, help="any checkpoint file, or a registered name")
    p.set_defaults(run=_inspect)
    p = sub.add_parser("embed", help="scene embeddings of audio files")
    p.add_argument("checkpoint", type=Path, help="any checkpoint the package reads, or a registered name")
    p.add_argument("audio", type=Path, nargs="+", help="audio files (any rate; resampled to 16 kHz, mixed to mono)")
    p.add_argument("--n-blocks", type=int, default=None, help="last blocks in the embedding (default: all)")
    p.add_argument("--out", type=Path, default=None, help="save the embeddings as .npy")
    p.set_defaults(run=_embed)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        with extras_named(f"python -m pretrain {args.command}"):
            args.run(args)
    except (ValueError, OSError, TrainingDivergedError) as err:  # bad input, missing files, a NaN run: one line
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
