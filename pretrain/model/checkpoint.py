"""ATST checkpoints: which layout a file has, which encoder it holds, and loading only that.

Layouts recognised (the family, Clip or Frame, is read from each encoder's own keys:
``cls_token`` + ``norm.*`` is Clip, ``norm_frame.*`` without ``cls_token`` is Frame):

================  ===============================================  ==========================================
layout            where the encoder is                              example
================  ===============================================  ==========================================
``lightning``     ``state_dict["model.teacher.encoder.*"]``         official ATST-Clip ``small.ckpt``,
                                                                    ATST-Frame small / base
``dino``          ``teacher["module.backbone.*"]``                  official ATST-Clip ``base.ckpt``
``atst``          as ``lightning``, ``hyper_parameters.format``     this project's pretraining and ``init``
``finetuned``     ``state_dict["encoder.encoder.*"]`` + ``head.*``  ATST-SED ``atst_as2M.ckpt``, audiossl
                                                                    fine-tuning of either family
``c2f``           ``state_dict["model.student.*"]`` (Frame);        ATST-C2F ``DistillLightningModule``
                  its Clip teacher ``model.teacher.encoder.*``
``c2f-finetuned`` ``state_dict["encoder.encoder.frame_encoder.*"]`` ATST-SED's C2F variant
``state-dict``    the only encoder found anywhere else              ``torch.save(encoder.state_dict())``
``safetensors``   the file's tensors                                ``python -m pretrain export``
================  ===============================================  ==========================================

Layouts are told apart by which encoders the file holds and of which family, never by a
prefix alone: a C2F file also holds ``model.teacher.encoder.*``, but a Clip encoder there
beside a Frame student under ``model.student.*``.

Width, depth and positions come from the tensor shapes; heads from the file's ``arch`` (or
this project's ``num_heads``), else ``width / 64``; the crop length from ``train_len``
(Clip Lightning), ``args.anchor_len[0]`` (DINO-style) or ``anchor_len`` (Frame), with the
family's default (6 s / 10 s) where the file has none.

Files are read by ``pretrain.model.torch_file`` (restricted unpickler, no code from the file
ever runs; see ``safe_pickle``). Only the chosen encoder's tensors are read from disk: the
student, heads and optimizer state of a training checkpoint are never loaded.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pretrain.model.encoder import ARCHS, HEAD_DIM, ATSTEncoder
from pretrain.model.family import CROP_KEYS, FAMILIES
from pretrain.model.limits import MAX_BLOCKS, MAX_EMBED_DIM, MAX_POSITIONS
from pretrain.model.registry import registry, resolve_checkpoint
from pretrain.model.safe_pickle import CheckpointError, Placeholder, TensorRef, UnsafeCheckpointError, short_repr
from pretrain.model.torch_file import iter_tensor_refs, read_torch_file

FORMAT_NAME = "atst-pretrain"
FORMAT_VERSION = 2
SAFETENSORS_FORMAT = "atst-encoder"

LIGHTNING_PREFIX = "model.teacher.encoder."
DINO_PREFIX = "module.backbone."
FINETUNED_PREFIX = "encoder.encoder."
C2F_STUDENT_PREFIX = "model.student."
C2F_FINETUNED_PREFIX = "encoder.encoder.frame_encoder."
STUDENT_PREFIXES = ("model.student.encoder.", "module.student.")
DINO_ARCHS = {"ast": "small", "ast_base": "base"}
MIN_CROP_SECONDS, MAX_CROP_SECONDS = 0.5, 10.0

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "EncoderSpec",
    "UnsafeCheckpointError",
    "inspect_checkpoint",
    "load_encoder",
    "read_checkpoint",
    "save_checkpoint",
    "write_random_checkpoint",
]


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the path given (and no registered name of that spelling)."""


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class EncoderSpec:
    """What a checkpoint says about the encoder it holds."""

    family: str  # "clip" | "frame"
    layout: str
    embed_dim: int
    depth: int
    num_heads: int
    n_positions: int
    crop_seconds: float  # the crop length it was trained on (train_len / anchor_len)
    arch: str | None
    where: str  # e.g. "state_dict['model.teacher.encoder.*']"


@dataclass
class CheckpointInfo:
    """What ``python -m pretrain inspect`` reports: the encoder and everything else in the file."""

    path: Path
    spec: EncoderSpec
    file_bytes: int
    encoder_parameters: int
    step: int | None = None
    epoch: int | None = None
    writer: str | None = None
    contents: list[str] = field(default_factory=list)
    placeholders: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        s = self.spec
        arch = f" ({s.arch})" if s.arch else ""
        lines = [
            f"{self.path} ({self.file_bytes / 1e6:.1f} MB)",
            f"  ATST-{s.family.capitalize()}{arch}, layout {s.layout}: width {s.embed_dim}, depth {s.depth}, "
            f"heads {s.num_heads}, {s.n_positions} positions, crop {s.crop_seconds:g} s",
            f"  encoder: {s.where}, {self.encoder_parameters / 1e6:.2f} M parameters",
        ]
        progress = [f"{name} {n}" for name, n in (("step", self.step), ("epoch", self.epoch)) if n is not None]
        if progress or self.writer:
            written = [f"written by {self.writer}"] if self.writer else []
            lines.append("  saved at: " + ", ".join(progress + written))
        lines += [f"  also holds: {item}" for item in self.contents[:40]]
        if len(self.contents) > 40:
            lines.append(f"  ... and {len(self.contents) - 40} more entries")
        for name, where in self.placeholders[:20]:
            lines.append(f"  placeholder (unknown class, not called): {name} at {where}")
        if len(self.placeholders) > 20:
            lines.append(f"  ... and {len(self.placeholders) - 20} more placeholders")
        return "\n".join(lines)


# --- finding encoders by their keys ----------------------------------------------------------


def _is_tensor(value: Any) -> bool:
    return isinstance(value, (TensorRef, Tensor, _SafetensorsRef))


def _encoders_in(weights: Mapping[str, Any]) -> dict[str, str]:
    """``{prefix: family}`` for every ATST encoder whose keys sit under ``prefix`` in ``weights``.

    Decided by key names only; whether the values are tensors is checked when one is loaded,
    so a damaged encoder is reported, not passed over for another one.
    """
    found = {}
    for key in weights:
        if not (isinstance(key, str) and key.endswith("pos_embed")):
            continue
        prefix = key[: -len("pos_embed")]
        if (prefix and not prefix.endswith(".")) or prefix + "blocks.0.norm1.weight" not in weights:
            continue
        family = next((f.name for f in FAMILIES.values() if f.holds_encoder(weights, prefix)), None)
        if family is not None:
            found[prefix] = family
    return found


def _mapping(tree: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = tree.get(key)
    return value if isinstance(value, Mapping) else {}


def _hparams(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("hyper_parameters", "args", "hparams"):
        value = tree.get(key)
        if isinstance(value, Mapping):
            return value
    return {}


TOP_LEVEL = ""  # container name of weights stored at the top of the file


@dataclass(frozen=True)
class _Location:
    """Where the encoder to load sits: ``tree[container]`` keys under ``prefix``."""

    layout: str
    container: str
    prefix: str
    family: str

    def weights_of(self, tree: Mapping[str, Any]) -> Mapping[str, Any]:
        return tree if self.container == TOP_LEVEL else _mapping(tree, self.container)

    def describe(self) -> str:
        return f"{self.container}['{self.prefix}*']" if self.container else f"'{self.prefix}*' at the top level"


def _locate(tree: Mapping[str, Any], source: str) -> _Location:
    """Which encoder of the file to load, and the file's layout (module docstring)."""
    in_state = _encoders_in(_mapping(tree, "state_dict"))
    if in_state.get(C2F_STUDENT_PREFIX) == "frame" and in_state.get(LIGHTNING_PREFIX) == "clip":
        return _Location("c2f", "state_dict", C2F_STUDENT_PREFIX, "frame")
    if LIGHTNING_PREFIX in in_state:
        layout = "atst" if _hparams(tree).get("format") == FORMAT_NAME else "lightning"
        return _Location(layout, "state_dict", LIGHTNING_PREFIX, in_state[LIGHTNING_PREFIX])
    if _encoders_in(_mapping(tree, "teacher")).get(DINO_PREFIX) == "clip":
        return _Location("dino", "teacher", DINO_PREFIX, "clip")
    for container in ("state_dict", TOP_LEVEL):
        encoders = _encoders_in(_mapping(tree, container) if container else tree)
        for layout, prefix in (("c2f-finetuned", C2F_FINETUNED_PREFIX), ("finetuned", FINETUNED_PREFIX)):
            if prefix in encoders:
                return _Location(layout, container, prefix, encoders[prefix])
    everywhere = [  # never a student: a file whose teacher is missing is not silently read as its student
        _Location("state-dict", container, prefix, family)
        for container in ("state_dict", TOP_LEVEL, "model")
        for prefix, family in _encoders_in(_mapping(tree, container) if container else tree).items()
        if not prefix.startswith(STUDENT_PREFIXES)
    ]
    if len(everywhere) == 1:
        return everywhere[0]
    if everywhere:
        places = ", ".join(f"{loc.describe()} ({loc.family})" for loc in everywhere)
        raise CheckpointError(f"{source} holds several ATST encoders ({places}) in no known layout; which is meant?")
    raise CheckpointError(f"{source} is not an ATST checkpoint: {_what_it_holds(tree)}")


def _what_it_holds(tree: Mapping[str, Any]) -> str:
    """A short account of a foreign file, for the error that refuses it."""
    keys = sorted(map(short_repr, list(tree)[:1000]))[:12]
    containers = (tree, _mapping(tree, "state_dict"), _mapping(tree, "model"))
    weights = max((c for c in containers if any(_is_tensor(v) for v in c.values())), key=len, default={})
    sample = [short_repr(k) for k, v in weights.items() if _is_tensor(v)][:4]
    seen = f"top-level keys {keys}"
    if sample:
        seen += f"; tensors such as {sample}"
    return (
        f"found {seen}. ATST files keep an encoder (pos_embed, blocks.N.*, and cls_token + norm.* or "
        f"norm_frame.*) under state_dict['{LIGHTNING_PREFIX}*'], teacher['{DINO_PREFIX}*'] or "
        f"state_dict['{FINETUNED_PREFIX}*']"
    )


def _crop_seconds(tree: Mapping[str, Any], family: str, source: str) -> float:
    hparams = _hparams(tree)
    value = next((hparams[k] for k in CROP_KEYS if k in hparams), FAMILIES[family].crop_seconds)
    if isinstance(value, (list, tuple)) and value:
        value = value[0]  # DINO-style anchor_len: one entry per crop
    if isinstance(value, Placeholder):
        raise CheckpointError(f"{source}: its crop length is an object of unknown class {value.global_name}")
    if isinstance(value, bool):
        raise CheckpointError(f"{source}: crop length ({' / '.join(CROP_KEYS)}) {value} is not a number")
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CheckpointError(
            f"{source}: crop length ({' / '.join(CROP_KEYS)}) {short_repr(value)} is not a number"
        ) from None
    if not MIN_CROP_SECONDS <= value <= MAX_CROP_SECONDS:
        raise CheckpointError(f"{source}: crop length {value} s is outside {MIN_CROP_SECONDS}..{MAX_CROP_SECONDS} s")
    return value


def _spec(opened: _Opened, source: str) -> tuple[EncoderSpec, _Location, dict[str, Any]]:
    """The encoder's spec, its location, and its weights (still unread) under their own names."""
    tree = opened.tree
    location = _locate(tree, source)
    prefix, layout, family = location.prefix, location.layout, location.family
    container = location.weights_of(tree)
    weights = {k[len(prefix) :]: v for k, v in container.items() if isinstance(k, str) and k.startswith(prefix)}
    if layout == "c2f":  # model.student.* is the encoder itself; nothing of a projector lives there
        weights = {k: v for k, v in weights.items() if not k.startswith(("encoder.", "projector.", "predictor."))}
    for key, value in weights.items():
        if not _is_tensor(value):
            what = value.global_name if isinstance(value, Placeholder) else type(value).__name__
            raise CheckpointError(f"{source}: encoder weight '{prefix}{key[:100]}' is not a tensor but {what}")
        if value.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{source}: encoder weight '{prefix}{key}' is {value.dtype}, "
                "not floating point (float32/16, bfloat16, float64)"
            )
    pos = weights["pos_embed"]
    if len(pos.shape) != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source}: encoder weight '{prefix}pos_embed' is {tuple(pos.shape)}, not (1, N, D)")
    embed_dim, n_positions = int(pos.shape[-1]), int(pos.shape[1])
    depth = sum(1 for k in weights if k.startswith("blocks.") and k.endswith(".norm1.weight"))
    for what, value, low, high in (
        ("width (pos_embed's last size)", embed_dim, 1, MAX_EMBED_DIM),
        ("positions (pos_embed's middle size)", n_positions, 2, MAX_POSITIONS),
        ("depth (blocks)", depth, 1, MAX_BLOCKS),
    ):
        if not low <= value <= high:
            raise CheckpointError(f"{source}: encoder {what} is {value}, outside {low}..{high}")
    hparams = _hparams(tree)
    arch = hparams.get("arch")
    arch = DINO_ARCHS.get(arch, arch) if isinstance(arch, str) else None
    if layout == "c2f":
        arch = None  # the file's arch names its Clip teacher
    if layout == "atst" and "num_heads" in hparams:
        num_heads = _heads(hparams["num_heads"], embed_dim, source)
    else:
        known = ARCHS.get(arch) if arch else None
        num_heads = known[2] if known and known[0] == embed_dim else max(1, embed_dim // HEAD_DIM)
        if embed_dim % num_heads:
            raise CheckpointError(f"{source}: width {embed_dim} is not a multiple of {num_heads} attention heads")
    spec = EncoderSpec(
        family=family,
        layout="safetensors" if opened.is_safetensors else layout,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        n_positions=n_positions,
        crop_seconds=_crop_seconds(tree, family, source),
        arch=arch,
        where="the file's tensors" if opened.is_safetensors else location.describe(),
    )
    return spec, location, weights


def _heads(value: Any, embed_dim: int, source: str) -> int:
    """The file's ``num_heads``: an integer (not a boolean) that divides the width."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f"{source}: num_heads is {short_repr(value)}, not an integer")
    if not 1 <= value <= embed_dim or embed_dim % int(value):
        raise CheckpointError(f"{source}: num_heads {int(value)} does not divide the width {embed_dim}")
    return int(value)


# --- what else a file holds (for inspect) --------------------------------------------------------


def _megabytes(refs) -> float:
    return sum(r.nbytes for r in refs) / 1e6


def _weight_groups(weights: Mapping[str, Any], skip: str) -> list[str]:
    """Groups of tensors by key prefix (``model.student.encoder``, ``head``, ...), the loaded one left out."""
    encoders = set(_encoders_in(weights))
    groups: dict[str, list] = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not _is_tensor(value) or (skip and key.startswith(skip)):
            continue
        group = next((p[:-1] for p in encoders if key.startswith(p)), None)
        if group is None:
            parts = key.split(".")
            n = 1
            while n < len(parts) - 1 and parts[n - 1] in ("model", "module", "student", "teacher", "encoder"):
                n += 1
            group = ".".join(parts[:n])
        groups.setdefault(group, []).append(value)
    out = []
    for group, refs in groups.items():
        label = f"{group}.* ({len(refs)} tensors, {_megabytes(r for r in refs if isinstance(r, TensorRef)):.1f} MB)"
        if group in {p[:-1] for p in encoders}:
            family = _encoders_in(weights)[group + "."]
            label = f"{group}.* (another ATST-{family.capitalize()} encoder, {len(refs)} tensors)"
        elif group.split(".")[-1] == "head" or group.endswith(("linear", "head")):
            out_features = [r.shape[0] for r in refs if len(r.shape) == 2]
            if out_features:
                label += f", {out_features[-1]} outputs"
        out.append(label)
    return out


def _contents(tree: Mapping[str, Any], location: _Location) -> list[str]:
    out = []
    if location.container == TOP_LEVEL:
        out += [f"top level: {g}" for g in _weight_groups(tree, location.prefix)]
    for key, value in tree.items():
        if key in ("epoch", "global_step", "pytorch-lightning_version", "hparams_name") or (
            location.container == TOP_LEVEL and _is_tensor(value)
        ):
            continue
        if key in ("state_dict", "teacher", "student", "model") and isinstance(value, Mapping):
            groups = _weight_groups(value, location.prefix if key == location.container else "")
            out += [f"{key}: {g}" for g in groups]
        elif key in ("optimizer_states", "optimizer"):
            states = value if isinstance(value, list) else [value]
            refs = list(iter_tensor_refs(value))
            n_params = sum(len(s.get("state", {})) for s in states if isinstance(s, Mapping))
            out.append(f"{key}: {len(states)} optimizer(s), {n_params} parameter states, {_megabytes(refs):.1f} MB")
        elif key == "callbacks" and isinstance(value, Mapping):
            out.append(f"{key}: " + ", ".join(str(k).split("{")[0] for k in value))
        elif isinstance(value, Mapping):
            names = ", ".join(map(short_repr, list(value)[:6])) + (", ..." if len(value) > 6 else "")
            out.append(f"{short_repr(key)}: {len(value)} {'entry' if len(value) == 1 else 'entries'} ({names})")
        elif isinstance(value, list):
            out.append(f"{short_repr(key)}: {len(value)} {'item' if len(value) == 1 else 'items'}")
        else:
            out.append(f"{short_repr(key)}: {short_repr(value)}")
    return out


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SafetensorsRef:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _dtype_of(name: str) -> torch.dtype | str:
    return _SAFETENSORS_DTYPES.get(name, name)  # other types stay named, and are refused as weights


@dataclass
class _Opened:
    """A checkpoint file opened without reading tensor data: its tree, and how to read a tensor."""

    tree: Mapping[str, Any]
    read: Callable[[Any], Tensor]
    placeholders: list[tuple[str, str]]
    is_safetensors: bool = False
    check: Callable[[Any], None] = lambda ref: None  # refuses a tensor that does not fit its storage


def _open(path: str | os.PathLike) -> _Opened:
    """Open a checkpoint file (torch or safetensors), or a registered name's cached file
    (``pretrain.model.registry``, downloaded on first use), without reading its tensors."""
    path = resolve_checkpoint(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        names = ", ".join(sorted(registry()))
        raise CheckpointNotFoundError(
            f"checkpoint not found: {path} (a file, or one of the registered names: {names})"
        ) from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"checkpoint path is not a regular file (a FIFO, socket or device): {path}")
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    torch_file = read_torch_file(path)
    if not isinstance(torch_file.tree, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(torch_file.tree).__name__}, not a dict")
    return _Opened(torch_file.tree, torch_file.tensor, torch_file.placeholders, check=torch_file.check)


def _open_safetensors(path: Path) -> _Opened:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            refs = {}
            for k in f.keys():
                piece = f.get_slice(k)
                refs[LIGHTNING_PREFIX + k] = _SafetensorsRef(k, tuple(piece.get_shape()), _dtype_of(piece.get_dtype()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read safetensors file {path}: {short_repr(str(err))}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an exported ATST encoder (no format tag)")
    family = metadata.get("family", "clip")
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: its metadata names family {short_repr(family)}, not one of {sorted(FAMILIES)}")
    heads = metadata.get("num_heads", "")
    if not heads.isdigit():
        raise CheckpointError(f"{path}: its metadata's num_heads is {short_repr(heads or None)}, not an integer")
    hparams = {"format": FORMAT_NAME, "arch": metadata.get("arch") or None, "num_heads": int(heads)}
    crop = metadata.get("crop_seconds", metadata.get("train_len"))  # "train_len": exports of format version 1
    if crop is not None:
        hparams[FAMILIES[family].crop_key] = crop  # a number as text; checked with every crop length

    def read(ref: _SafetensorsRef) -> Tensor:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(ref.key)

    return _Opened({"state_dict": refs, "hyper_parameters": hparams}, read, [], is_safetensors=True)


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Describe a checkpoint without reading its tensors: encoder, layout, step, what else it holds."""
    path = resolve_checkpoint(path)
    opened = _open(path)
    spec, location, weights = _spec(opened, str(path))
    tree = opened.tree
    writer = tree.get("pytorch-lightning_version")
    return CheckpointInfo(
        path=Path(path),
        spec=spec,
        file_bytes=Path(path).stat().st_size,
        encoder_parameters=sum(math.prod(ref.shape) for ref in weights.values()),
        step=_as_int(tree.get("global_step")),
        epoch=_as_int(tree.get("epoch")),
        writer=f"Lightning {writer}" if isinstance(writer, str) else None,
        contents=[] if opened.is_safetensors else _contents(tree, location),
        placeholders=opened.placeholders,
    )


def _meta_encoder(spec: EncoderSpec) -> ATSTEncoder:
    with torch.device("meta"):  # no memory: only the names and shapes the weights must have
        return ATSTEncoder(
            family=spec.family,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            n_positions=spec.n_positions,
        )


def _check_fit(encoder: ATSTEncoder, shapes: Mapping[str, tuple[int, ...]], spec: EncoderSpec, source: str) -> None:
    """Refuse weights (their names and shapes) that do not fit the encoder; the message names them."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(shapes[k])} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and tuple(shapes[k]) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {[k[:100] for k in unexpected[:8]]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong_shape:
        problems.append(f"wrong shapes {wrong_shape[:8]}")
    if problems:
        raise CheckpointError(
            f"encoder weights in {source} do not fit an ATST-{spec.family.capitalize()} encoder: " + "; ".join(problems)
        )


def build_encoder(weights: Mapping[str, Tensor], spec: EncoderSpec, source: str = "checkpoint") -> ATSTEncoder:
    """An encoder of the spec's family and shape holding ``weights``; errors name ill-fitting keys
    and weights that are not finite (a diverged run's NaN).

    The encoder is made on the meta device and takes the tensors as they are (no second copy).
    """
    encoder = _meta_encoder(spec)
    _check_fit(encoder, {k: tuple(v.shape) for k, v in weights.items()}, spec, source)
    tensors = {}
    for key, value in weights.items():
        if not value.is_floating_point():
            raise CheckpointError(f"encoder weight {key} in {source} is {value.dtype}, not floating point")
        value = value.float()
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"encoder weight {key} in {source} holds NaN or Inf values (a training run that diverged?)"
            )
        tensors[key] = value
    encoder.load_state_dict(tensors, strict=True, assign=True)
    return encoder.eval()


def load_encoder(path: str | os.PathLike) -> tuple[ATSTEncoder, EncoderSpec]:
    """Read any supported checkpoint and return its encoder (eval mode) and spec.

    Only the encoder's tensors are read from the file, and only once their names, types and
    shapes fit the encoder the file describes.
    """
    opened = _open(path)
    spec, _location, refs = _spec(opened, str(path))
    _check_fit(_meta_encoder(spec), {k: tuple(v.shape) for k, v in refs.items()}, spec, str(path))
    if not opened.is_safetensors:
        for ref in refs.values():
            opened.check(ref)
    weights = {k: opened.read(v) for k, v in refs.items()}
    return build_encoder(weights, spec, str(path)), spec


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A whole checkpoint as plain containers with every tensor read (on the CPU), safely."""
    opened = _open(path)

    def visit(value: Any) -> Any:
        if isinstance(value, (TensorRef, _SafetensorsRef)):
            return opened.read(value)
        if isinstance(value, Mapping):
            return {k: visit(v) for k, v in value.items()}
        if isinstance(value, list):
            return [visit(v) for v in value]
        if isinstance(value, tuple):
            return tuple(visit(v) for v in value)
        return value

    return visit(opened.tree)


# --- writing ---------------------------------------------------------------------------------


def encoder_checkpoint(encoder: ATSTEncoder, *, crop_seconds: float | None = None, arch: str | None = None) -> dict:
    """This project's checkpoint dict for an encoder, in the official Lightning layout (plain types)."""
    crop = encoder.family.crop_seconds if crop_seconds is None else float(crop_seconds)
    hparams = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": encoder.family.name,
        "arch": arch,
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        encoder.family.crop_key: crop,
    }
    state = {LIGHTNING_PREFIX + k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return {"state_dict": state, "hyper_parameters": hparams}


def save_checkpoint(
    path: str | os.PathLike, encoder: ATSTEncoder, *, crop_seconds: float | None = None, arch: str | None = None
) -> Path:
    """Write an encoder in this project's layout, atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(encoder_checkpoint(encoder, crop_seconds=crop_seconds, arch=arch), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_random_checkpoint(
    path: str | os.PathLike,
    arch: str = "small",
    *,
    family: str = "clip",
    seed: int = 0,
    crop_seconds: float | None = None,
) -> Path:
    """Write a randomly initialised encoder of a named size (for tests, demos and smoke runs)."""
    torch.manual_seed(seed)
    return save_checkpoint(path, ATSTEncoder.from_arch(arch, family=family), crop_seconds=crop_seconds, arch=arch)
