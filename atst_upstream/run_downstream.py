"""Run s3prl's downstream runner with the ``atst`` upstream, without editing s3prl.

    python -m atst_upstream.run_downstream -m train -u atst -k model.ckpt -d speech_commands -n ks_atst \\
        -o "config.downstream_expert.datarc.speech_commands_root=/data/sc/train,,..."

All of s3prl's ``run_downstream.py`` flags work as they do there. The launcher only:

* registers this package's hub entries (``atst``, ``atst_local``) on ``s3prl.hub``, where
  s3prl looks upstream names up at call time;
* for a new experiment without ``-c``, uses the config this package ships for the task
  (``atst_upstream/configs/<task>/config.yaml``: KS, SID, ER, IC), since the PyPI s3prl has
  none; results go to ``./result/downstream/<name>`` as with s3prl;
* adds ``--device cpu`` when no ``--device`` is given and CUDA is unavailable;
* drops s3prl's voxceleb1 file-list cache (kept in s3prl's package folder) when it lists
  files that no longer exist, or always with ``--clear-data-cache``;
* on torch >= 2.6 allows ``argparse.Namespace`` in ``torch.load`` (s3prl's own experiment
  checkpoints store their arguments that way).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from atst_upstream import hubconf
from pretrain.extras import extras_named

CONFIG_DIR = Path(__file__).parent / "configs"
CLEAR_CACHE_FLAG = "--clear-data-cache"
log = logging.getLogger("atst_upstream")


def hub_entries() -> dict[str, object]:
    """The public callables of ``hubconf`` (s3prl's registration rule)."""
    return {k: v for k, v in vars(hubconf).items() if not k.startswith("_") and callable(v)}


def register(hub) -> list[str]:
    """Make the ATST entries resolvable as ``getattr(s3prl.hub, name)``."""
    for name, entry in hub_entries().items():
        setattr(hub, name, entry)
    return sorted(hub_entries())


def _flag_value(argv: Sequence[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "=") and name.startswith("--"):
                return arg.split("=", 1)[1]
    return None


def _has_flag(argv: Sequence[str], *names: str) -> bool:
    return any(arg in names or any(arg.startswith(n + "=") for n in names if n.startswith("--")) for arg in argv)


def s3prl_argv(argv: Sequence[str]) -> list[str]:
    """The arguments handed to s3prl: the user's, plus a packaged config and the device."""
    out = [a for a in argv if a != CLEAR_CACHE_FLAG]
    resuming = _has_flag(out, "-e", "--past_exp") or _has_flag(out, "-a", "--auto_resume")
    task = _flag_value(out, "-d", "--downstream")
    if task and not resuming and not _has_flag(out, "-c", "--config"):
        packaged = CONFIG_DIR / task / "config.yaml"
        if packaged.is_file():
            out += ["-c", str(packaged)]
    if not _has_flag(out, "--device") and not torch.cuda.is_available():
        out += ["--device", "cpu"]
    return out


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # a file list needs no classes
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a file-list cache")


def _cached_paths(path: Path) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            paths = _NoGlobals(f).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError):
        return None
    return paths if isinstance(paths, list) and all(isinstance(p, str) for p in paths) else None


def clear_stale_voxceleb1_cache(*, force: bool = False) -> list[Path]:
    """Remove s3prl's voxceleb1 split caches that are unreadable or list missing files."""
    from s3prl.downstream.voxceleb1 import dataset

    removed = []
    for cache in sorted(Path(dataset.CACHE_PATH).glob("*.pkl")):
        paths = _cached_paths(cache)
        if force or paths is None or not all(Path(p).is_file() for p in paths):
            cache.unlink()
            removed.append(cache)
            log.warning("removed stale s3prl voxceleb1 file-list cache %s", cache)
    return removed


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = s3prl_argv(argv)
    with extras_named("atst-s3prl-downstream"):
        from s3prl import hub  # imports every built-in upstream, as s3prl itself does

    register(hub)
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
        torch.serialization.add_safe_globals([argparse.Namespace])
    if _flag_value(args, "-d", "--downstream") == "voxceleb1":
        clear_stale_voxceleb1_cache(force=CLEAR_CACHE_FLAG in argv)
    from s3prl import run_downstream

    sys.argv = ["run_downstream.py", *args]
    run_downstream.main()


if __name__ == "__main__":
    main()
