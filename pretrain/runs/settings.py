"""Run settings as dataclasses whose fields carry their own help: one source for the flag, its help
line, its choices and range, the YAML key and the value the training code reads.

A settings class declares each field with :func:`setting`; :func:`add_arguments` turns the fields
into ``--flags`` (help, unit, choices, range and the official values taken from the presets),
:func:`from_arguments` applies a preset, then a YAML file, then the flags, checking every value
against its field. Pretraining (``pretrain.training.config``) and fine-tuning
(``pretrain.finetune.recipe``) both build on it. YAML is read only when a file is given, so the
core install (no PyYAML) can build the parsers.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class Interval:
    """Allowed values of a number: ``[low, high]``, either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def setting(
    default: Any,
    help: str,  # noqa: A002 - argparse's name for it
    *,
    choices: Sequence[str] | None = None,
    unit: str | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    official: bool = True,
    alias: str | None = None,
) -> Any:
    """A dataclass field with what its flag needs. ``official=False`` for settings the official
    scripts do not fix (paths, devices, seeds): their help lists no official value. ``alias`` is a
    second flag name kept working (e.g. ``--method`` for ``--family``)."""
    bounds = Interval(low, high, low_open, high_open) if low is not None or high is not None else None
    meta = {"help": help, "choices": tuple(choices) if choices else None, "unit": unit, "bounds": bounds}
    meta |= {"official": official, "alias": alias}
    return field(default=default, metadata=meta)


def _kind(f: Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def check_value(f: Field, value: Any) -> Any:
    """``value`` for field ``f``, or ``ValueError`` naming the setting: its type, choices and range.
    Floats must be finite; a "low,high" pair must be ordered."""
    kind, meta = _kind(f), f.metadata
    name = f.name
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{name} must be a pair LOW,HIGH, got {value!r}")
        pair = tuple(check_number(name, v, float, meta.get("bounds")) for v in value)
        if pair[0] > pair[1]:
            raise ValueError(f"{name} must be LOW,HIGH with LOW <= HIGH, got {value!r}")
        return pair
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        return check_number(name, value, int if kind == "int" else float, meta.get("bounds"))
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}; got {value!r}")
    return value


def check_number(name: str, value: Any, kind: type, bounds: Interval | None) -> int | float:
    wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
    if wrong_type or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    value = kind(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if bounds is not None and not bounds.contains(value):
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return value


def parse_text(f: Field, text: str) -> Any:
    """A flag's text as the value of field ``f`` (pairs as ``low,high``, booleans as true/false),
    checked by :func:`check_value`."""
    kind = _kind(f)
    try:
        if kind.startswith("tuple"):
            value: Any = tuple(float(v) for v in text.split(","))
        elif kind == "bool":
            value = BOOLEAN_WORDS.get(text.lower(), text)
        elif kind == "int":
            value = int(text)
        elif kind == "float":
            value = float(text)
        else:
            value = text
    except ValueError:
        raise ValueError(f"{f.name} must be {kind.replace('tuple[float, float]', 'LOW,HIGH')}, got {text!r}") from None
    return check_value(f, value)


def _flag_type(f: Field) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_text(f, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = _kind(f)
    return convert


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def official_values(f: Field, presets: Mapping[str, Mapping[str, Any]], official: Sequence[str]) -> str:
    """"0.99 (small), 0.9995 (base)": the field's value in each official preset, equal values together."""
    by_value: dict[str, list[str]] = {}
    for name in official:
        value = presets[name].get(f.name, f.default)
        by_value.setdefault(_format(value), []).append(name)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())


def help_line(f: Field, presets: Mapping[str, Mapping[str, Any]], official: Sequence[str]) -> str:
    meta = f.metadata
    parts = [meta["help"]]
    kind = _kind(f).replace("tuple[float, float]", "LOW,HIGH").replace("str", "text")
    details = [meta["unit"] if meta.get("unit") else kind] if not meta.get("choices") else []
    if meta.get("bounds") is not None:
        details.append(str(meta["bounds"]))
    if meta.get("official") and official:
        details.append(f"official: {official_values(f, presets, official)}")
    if details:
        parts.append(f"[{'; '.join(details)}]")
    if meta.get("alias"):
        parts.append(f"(--{meta['alias'].replace('_', '-')}: its former name)")
    return " ".join(parts)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    presets: Mapping[str, Mapping[str, Any]],
    official: Sequence[str],
) -> None:
    """One ``--name`` flag per field of ``cls`` (default ``None``: the preset's value stands)."""
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        names = [f"--{f.name.replace('_', '-')}"]
        if f.metadata.get("alias"):
            names.append(f"--{f.metadata['alias'].replace('_', '-')}")
        choices = f.metadata.get("choices")
        if _kind(f) == "bool":
            choices = ("true", "false")
        parser.add_argument(
            *names,
            dest=f.name,
            default=None,
            type=_flag_type(f) if _kind(f) != "str" else str,
            choices=choices if _kind(f) == "str" else None,
            metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(),
            help=help_line(f, presets, official),
        )


def from_arguments(
    args: argparse.Namespace,
    cls: type[T],
    presets: Mapping[str, Mapping[str, Any]],
    preset: str,
    aliases: Mapping[str, str] | None = None,
) -> T:
    """``cls`` from the preset, then ``args.config`` (a YAML file; keys may be official names listed
    in ``aliases``), then the flags that were given; every value checked against its field."""
    by_name = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = dict(presets[preset])
    config_file: Path | None = getattr(args, "config", None)
    if config_file is not None:
        values.update(read_yaml(config_file, by_name, aliases or {}))
    for name in by_name:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return cls(**{name: check_value(by_name[name], value) for name, value in values.items()})


def read_yaml(path: Path, by_name: Mapping[str, Field], aliases: Mapping[str, str]) -> dict[str, Any]:
    try:
        import yaml
    except ModuleNotFoundError:
        raise ValueError(f"reading {path} needs PyYAML: pip install 'atst-plugins[pretrain]'") from None
    if not path.is_file():
        raise FileNotFoundError(f"settings file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(loaded).__name__}")
    loaded = {aliases.get(k, k): v for k, v in loaded.items()}
    unknown = sorted(set(loaded) - set(by_name))
    if unknown:
        raise ValueError(f"unknown settings in {path}: {unknown}")
    # PyYAML reads 5e-4 (no dot) as a string: numbers written so are parsed as the flags are
    return {
        k: parse_text(by_name[k], v) if isinstance(v, str) and _kind(by_name[k]) != "str" else v
        for k, v in ((k, tuple(v) if isinstance(v, list) else v) for k, v in loaded.items())
    }


def to_plain(config: Any) -> dict[str, Any]:
    """A settings object as plain types (pairs as lists): hyper-parameters, JSON, YAML."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_plain(cls: type[T], values: Mapping[str, Any]) -> T:
    """The inverse of :func:`to_plain` (lists back to pairs)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def lightning_devices(text: str) -> int | str | list[int]:
    """The ``devices`` setting as Lightning takes it: "auto", a count, or "0,1" indices."""
    if text == "auto":
        return "auto"
    try:
        return [int(d) for d in text.split(",") if d] if "," in text else int(text)
    except ValueError:
        raise ValueError(f"devices must be auto, a count or comma-separated indices, got {text!r}") from None
