"""Reading and writing ATST checkpoints without executing code from the file.

Three layouts are read (architecture and ``train_len`` come from the file):

* ``lightning``: the official ``small.ckpt``; encoder under
  ``state_dict["model.teacher.encoder.*"]``, config in ``hyper_parameters`` (pickled as
  Lightning's ``AttributeDict``);
* ``dino``: the official ``base.ckpt``; encoder under ``teacher["module.backbone.*"]``,
  config in ``args`` (an ``argparse.Namespace``; ``arch`` "ast" = small, "ast_base" = base);
* ``atst``: this project's files, the Lightning layout with plain-typed ``hyper_parameters``
  that also name the width, depth and heads, so official tools read them too;
* ``safetensors``: a teacher encoder exported by ``python -m pretrain export`` (encoder keys,
  shape and ``train_len`` in the file's metadata). Safetensors holds no code at all.

Files are read with ``torch.load(weights_only=True)``. The only classes allowed beyond
PyTorch's own are ``argparse.Namespace`` and stand-ins for Lightning's ``AttributeDict``
(plain dicts registered under Lightning's module paths), so Lightning need not be
installed; any other global is refused with an error naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.model.encoder import ARCHS, HEAD_DIM, ATSTEncoder

DEFAULT_TRAIN_LEN = 6.0
FORMAT_NAME = "atst-pretrain"
FORMAT_VERSION = 1
SAFETENSORS_FORMAT = "atst-encoder"

LIGHTNING_PREFIX = "model.teacher.encoder."
DINO_PREFIX = "module.backbone."
DINO_ARCHS = {"ast": "small", "ast_base": "base"}

# Module paths under which Lightning versions pickled AttributeDict.
_ATTRIBUTE_DICT_MODULES = (
    "pytorch_lightning.utilities.parsing",
    "lightning.fabric.utilities.data",
    "lightning_fabric.utilities.data",
)


class CheckpointError(ValueError):
    """A file that is not a usable ATST checkpoint; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that references code (a pickled global) outside the allowed set."""


def _attribute_dict_stand_in(module: str) -> type:
    return type("AttributeDict", (dict,), {"__module__": module, "__qualname__": "AttributeDict"})


_ALLOWED_GLOBALS: list[Any] = [argparse.Namespace] + [_attribute_dict_stand_in(m) for m in _ATTRIBUTE_DICT_MODULES]


@contextlib.contextmanager
def _allowed_globals() -> Iterator[None]:
    """Allow our extra classes for one load only, leaving torch's global allowlist unchanged."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5
        with serialization.safe_globals(_ALLOWED_GLOBALS):
            yield
        return
    previous = list(serialization.get_safe_globals())
    serialization.add_safe_globals(_ALLOWED_GLOBALS)
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(previous)


def _plain(value: Any) -> Any:
    """Namespace / AttributeDict stand-ins -> plain dicts, recursively."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping) and not isinstance(value, Tensor):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file safely into plain Python containers and tensors (on the CPU)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint is truncated or corrupt (its zip directory is unreadable): {path}")
    if not head.startswith(b"PK") and head[:1] != b"\x80":
        raise CheckpointError(f"not a PyTorch checkpoint (neither a zip archive nor a pickle): {path}")
    try:
        with _allowed_globals():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"GLOBAL (\S+)", str(err))
        if match:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it references {match.group(1)}, which is not an allowed "
                "class (only tensors, containers, argparse.Namespace and Lightning's AttributeDict are)"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint is truncated or corrupt: {path} ({_first_line(err)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return _plain(obj)


def _read_safetensors(path: Path) -> dict[str, Any]:
    """An exported encoder as a checkpoint dict of this project's layout."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {LIGHTNING_PREFIX + k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read safetensors file {path}: {_first_line(err)}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an exported ATST encoder (no format tag)")
    hparams = {
        "format": FORMAT_NAME,
        "arch": metadata.get("arch") or None,
        "num_heads": int(metadata["num_heads"]),
        "train_len": float(metadata["train_len"]),
    }
    return {"state_dict": weights, "hyper_parameters": hparams}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class EncoderSpec:
    """What a checkpoint says about its encoder."""

    layout: str
    embed_dim: int
    depth: int
    num_heads: int
    n_positions: int
    train_len: float
    arch: str | None


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def split_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> tuple[dict[str, Tensor], EncoderSpec]:
    """Find the encoder weights and configuration in a loaded checkpoint of any known layout."""
    state_dict = ckpt.get("state_dict")
    teacher = ckpt.get("teacher")
    if isinstance(state_dict, Mapping) and any(str(k).startswith(LIGHTNING_PREFIX) for k in state_dict):
        weights = _strip(state_dict, LIGHTNING_PREFIX)
        hparams = ckpt.get("hyper_parameters") or {}
        layout = "atst" if hparams.get("format") == FORMAT_NAME else "lightning"
        arch = hparams.get("arch")
        train_len = hparams.get("train_len", DEFAULT_TRAIN_LEN)
        num_heads = hparams.get("num_heads") if layout == "atst" else None
    elif isinstance(teacher, Mapping) and any(str(k).startswith(DINO_PREFIX) for k in teacher):
        weights = _strip(teacher, DINO_PREFIX)
        args = ckpt.get("args") or {}
        layout = "dino"
        arch = DINO_ARCHS.get(args.get("arch"), args.get("arch"))
        anchor = args.get("anchor_len", DEFAULT_TRAIN_LEN)
        train_len = anchor[0] if isinstance(anchor, (list, tuple)) else anchor
        num_heads = None
    else:
        raise CheckpointError(
            f"unknown checkpoint layout in {source}: expected state_dict['{LIGHTNING_PREFIX}*'] "
            f"(Lightning / this project) or teacher['{DINO_PREFIX}*'] (DINO-style); "
            f"top-level keys are {sorted(map(str, ckpt))[:10]}"
        )
    for required in ("cls_token", "pos_embed"):
        if not isinstance(weights.get(required), Tensor) or weights[required].ndim != 3:
            raise CheckpointError(f"{source}: encoder weight '{required}' is missing or not a (1, N, D) tensor")
    embed_dim = int(weights["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in weights if k.startswith("blocks.") and k.endswith(".norm1.weight")})
    if num_heads is None:
        known = ARCHS.get(arch) if isinstance(arch, str) else None
        num_heads = known[2] if known and known[0] == embed_dim else max(1, embed_dim // HEAD_DIM)
    try:
        train_len = float(train_len)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: train_len {train_len!r} is not a number") from None
    if not 0.5 <= train_len <= 10.0:
        raise CheckpointError(f"{source}: train_len {train_len} s is outside 0.5..10 s")
    spec = EncoderSpec(
        layout=layout,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(num_heads),
        n_positions=int(weights["pos_embed"].shape[1]),
        train_len=train_len,
        arch=arch if isinstance(arch, str) else None,
    )
    return weights, spec


def build_encoder(weights: Mapping[str, Tensor], spec: EncoderSpec, source: str = "checkpoint") -> ATSTEncoder:
    """An encoder of the checkpoint's shape with its weights; errors name ill-fitting keys."""
    encoder = ATSTEncoder(
        embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads, n_positions=spec.n_positions
    )
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and (not isinstance(weights[k], Tensor) or weights[k].shape != v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong_shape:
        problems.append(f"wrong shapes {wrong_shape[:8]}")
    if problems:
        raise CheckpointError(f"encoder weights in {source} do not fit an ATST encoder: " + "; ".join(problems))
    encoder.load_state_dict(weights, strict=True)
    return encoder.eval()


def load_encoder(path: str | os.PathLike) -> tuple[ATSTEncoder, EncoderSpec]:
    """Read any supported checkpoint and return its (teacher) encoder, in eval mode, and spec."""
    weights, spec = split_checkpoint(read_checkpoint(path), str(path))
    return build_encoder(weights, spec, str(path)), spec


def encoder_checkpoint(encoder: ATSTEncoder, *, train_len: float = DEFAULT_TRAIN_LEN, arch: str | None = None) -> dict:
    """This project's checkpoint dict for an encoder (plain types only)."""
    hparams = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "train_len": float(train_len),
    }
    state = {LIGHTNING_PREFIX + k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return {"state_dict": state, "hyper_parameters": hparams}


def save_checkpoint(
    path: str | os.PathLike,
    encoder: ATSTEncoder,
    *,
    train_len: float = DEFAULT_TRAIN_LEN,
    arch: str | None = None,
) -> Path:
    """Write an encoder in this project's layout, atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(encoder_checkpoint(encoder, train_len=train_len, arch=arch), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_random_checkpoint(
    path: str | os.PathLike, arch: str = "small", *, seed: int = 0, train_len: float = DEFAULT_TRAIN_LEN
) -> Path:
    """Write a randomly initialised encoder of a named size (for tests, demos and smoke runs)."""
    torch.manual_seed(seed)
    return save_checkpoint(path, ATSTEncoder.from_arch(arch), train_len=train_len, arch=arch)
