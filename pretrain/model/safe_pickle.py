"""Reading PyTorch checkpoint files without running any code from them.

A ``.ckpt``/``.pt`` file is a pickle, and a pickle may name any importable callable and ask
for it to be called with arguments of its choosing. This module reads such files with its
own restricted unpickler (``pickle.Unpickler.find_class`` overridden), not with
``torch.load``:

* Globals on a data-only allowlist are mapped to constructors written here that only build
  data: tensors (as lazy ``TensorRef`` records), NumPy scalars, arrays and dtypes under both
  NumPy module names (``numpy.core.*`` in files written with NumPy 1.x, ``numpy._core.*`` with
  NumPy 2), ``argparse.Namespace`` and Lightning's ``AttributeDict`` (as dicts), ``pathlib``
  paths (as pure paths), ``OrderedDict``, sets, ``torch.Size``/dtypes/devices, and
  ``_codecs.encode`` for latin-1 only (how protocol 2 stores raw bytes). None of these imports
  or calls anything named by the file.
* Any other global becomes an inert ``Placeholder`` type: it records what the file asked
  for and is never called. Placeholders outside the weights a caller needs are reported
  (``restricted_load`` returns them with their places); where weights are needed, the caller refuses them.
* A file that asks for a global that exists to run code (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, ...: ``CODE_RUNNING_MODULES`` / ``CODE_RUNNING_NAMES``) is refused
  as a whole, with the global and its place in the file named, wherever it sits. It was
  never called: the refusal is a statement about the file, not a narrow escape.

Tensors come out as ``TensorRef`` records (storage key, dtype, offset, shape, stride): no
tensor data is read here; ``pretrain.model.torch_file`` reads the storages a caller asks for.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (empty, truncated, corrupt, foreign); the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks for a global that exists to run code; nothing from it was called."""


# Globals whose only purpose in a pickle is to run code or touch the system. A file naming
# any of them is refused whole. (Anything else unknown becomes an inert placeholder.)
CODE_RUNNING_MODULES = frozenset(
    "os posix nt subprocess sys shutil importlib runpy pickle _pickle marshal socket ctypes code codeop pty "
    "webbrowser multiprocessing threading _thread signal io _io tempfile types functools operator inspect "
    "platform asyncio http urllib requests pip setuptools distutils site gc zipimport pkgutil commands popen2 "
    "timeit pdb bdb trace cProfile profile builtins __builtin__ copyreg copy_reg torch.hub torch.jit torch.ops "
    "torch._ops torch.utils.cpp_extension torch.package torch.serialization numpy.lib.npyio numpy.f2py".split()
)
CODE_RUNNING_NAMES = frozenset(
    "eval exec execfile compile __import__ getattr setattr delattr globals locals vars open input breakpoint "
    "system popen spawn apply load loads call check_call check_output run Popen".split()
)


# --- lazy tensors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageRef:
    """A storage of the file, not yet read: ``numel`` elements of ``dtype`` under ``key``."""

    key: str
    dtype: torch.dtype
    numel: int
    view_offset: int = 0  # legacy files: a view into a larger storage (elements)


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the file, not yet read."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * element_size(self.dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# Legacy typed-storage class names (the type a storage is pickled with) -> element dtype.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


@dataclass(frozen=True)
class StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: StorageRef, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise CheckpointError(f"a tensor refers to {type(storage).__name__}, not to a storage of the file")
    return TensorRef(storage, storage.view_offset + int(offset), tuple(size), tuple(stride), storage.dtype)


def _rebuild_tensor_v3(
    storage: StorageRef, offset: int, size: tuple, stride: tuple, requires_grad: bool, hooks: Any, dtype: Any, *rest
) -> TensorRef:
    """Untyped storage (bytes) reinterpreted as ``dtype``: offsets count elements of ``dtype``."""
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"a tensor names {dtype!r} as its dtype")
    ref = _rebuild_tensor(storage, offset, size, stride)
    width = element_size(dtype)
    typed = StorageRef(storage.key, dtype, storage.numel * element_size(storage.dtype) // width)
    return TensorRef(typed, ref.offset, ref.shape, ref.stride, dtype)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any = None) -> Any:
    """Tensor subclasses: plain tensors and parameters are data; any other class stays a placeholder."""
    if new_type is _TENSOR_TYPE:
        return func(*args)
    if isinstance(new_type, type) and issubclass(new_type, Placeholder):
        return new_type(func, args, state)
    raise CheckpointError(f"a tensor subclass {new_type!r} in the file is not a class")


_TENSOR_TYPE = type("TensorType", (), {})  # torch.Tensor / torch.nn.Parameter as named by a file


# --- NumPy, without numpy's own unpickling functions ----------------------------------------

_NUMPY_KINDS = set("biufcmMSU")  # bool, ints, floats, complex, datetimes, byte/unicode strings; not objects


class _NumpyDtype:
    """``numpy.dtype(code, align, copy)`` followed by BUILD (byte order): resolved on use."""

    def __init__(self, code: Any = "f8", align: Any = False, copy: Any = True) -> None:
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        if not isinstance(self.code, str):
            raise CheckpointError(f"numpy dtype code {self.code!r} is not a string")
        dtype = np.dtype(self.code)
        if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
            raise CheckpointError(f"numpy dtype {self.code!r} holds objects or records, not numbers")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """A NumPy scalar of plain numbers; anything else (object scalars) stays a placeholder."""
    try:
        if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
            raise CheckpointError("not a number stored as bytes")
        return np.frombuffer(data, dtype=dtype.resolve(), count=1)[0]
    except (CheckpointError, ValueError, TypeError):
        return _placeholder_type("numpy", "scalar")(dtype, data)


class _NumpyArray:
    """``_reconstruct(ndarray, shape, code)`` followed by BUILD ``(version, shape, dtype, fortran, bytes)``."""

    def __init__(self, *_args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.ndarray:
        try:
            _version, shape, dtype, fortran, data = self.state
        except (TypeError, ValueError):
            raise CheckpointError("a numpy array in the file has an unknown layout") from None
        if not isinstance(dtype, _NumpyDtype) or not isinstance(data, (bytes, bytearray)):
            raise CheckpointError("a numpy array in the file does not hold plain numbers")
        array = np.frombuffer(bytes(data), dtype=dtype.resolve())
        return array.reshape(tuple(shape), order="F" if fortran else "C").copy()


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 arrays: ``numpy._core.numeric._frombuffer``."""
    array = _NumpyArray()
    array.state = (1, shape, dtype, order == "F", bytes(buffer))
    return array.resolve()


def _numpy_dtype_class(name: str):
    def make(*_args: Any) -> _NumpyDtype:
        return _NumpyDtype(np.dtype(getattr(np.dtypes, name)).str)

    return make


# --- other data types ------------------------------------------------------------------------


class _Namespace(dict):
    """``argparse.Namespace`` read as the dict of its attributes."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.update(state)


class _AttributeDict(dict):
    """Lightning's ``AttributeDict`` (a dict) without importing Lightning."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.update(state)


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise CheckpointError(f"_codecs.encode is allowed for latin-1 text only, got {encoding!r}")
    return text.encode("latin1")


def _path(flavour: type):
    def make(*parts: Any) -> pathlib.PurePath:
        if not all(isinstance(p, str) for p in parts):
            raise CheckpointError("a path in the file is not made of strings")
        return flavour(*parts)

    return make


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """copyreg's protocol-0/1 object constructor, for this module's own types only."""
    if isinstance(cls, type) and issubclass(cls, (Placeholder, _Namespace, _AttributeDict)):
        return cls.__new__(cls)
    raise CheckpointError(f"copyreg._reconstructor called for {cls!r}")


def _torch_dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise KeyError(name)
    return value


# Constructors of plain data: calling them builds a value and nothing else.
_PURE_BUILTINS = {
    t.__name__: t for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bytearray, bool, slice)
} | {"object": object}


def _allowed(module: str, name: str) -> Any:
    """The constructor for an allowed global, or ``None``."""
    if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        return {"scalar": _numpy_scalar, "_reconstruct": _NumpyArray}.get(name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_frombuffer
    if module == "numpy":
        return {"dtype": _NumpyDtype, "ndarray": _NumpyArray}.get(name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        dtype_class = getattr(np.dtypes, name, None)
        if dtype_class is not None and np.dtype(dtype_class).kind in _NUMPY_KINDS:
            return _numpy_dtype_class(name)
        return None
    if module == "torch._utils":
        return {
            "_rebuild_tensor": _rebuild_tensor,
            "_rebuild_tensor_v2": _rebuild_tensor,
            "_rebuild_tensor_v3": _rebuild_tensor_v3,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }.get(name)
    if module == "torch._tensor" and name in ("_rebuild_from_type", "_rebuild_from_type_v2"):
        return _rebuild_from_type
    if (module, name) in (("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _TENSOR_TYPE
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
        return StorageType(_STORAGE_DTYPES[name])
    if module == "torch":
        if name == "Size":
            return torch.Size
        if name == "device":
            return torch.device
        try:
            return _torch_dtype(name)
        except KeyError:
            return None
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _PURE_BUILTINS:
        return _PURE_BUILTINS[name]
    if (module, name) == ("_codecs", "encode"):
        return _latin1
    if (module, name) == ("argparse", "Namespace"):
        return _Namespace
    if name == "AttributeDict" and module in _ATTRIBUTE_DICT_MODULES:
        return _AttributeDict
    if module in ("pathlib", "pathlib._local"):
        pure = {"PosixPath": pathlib.PurePosixPath, "PurePosixPath": pathlib.PurePosixPath}
        pure |= {"WindowsPath": pathlib.PureWindowsPath, "PureWindowsPath": pathlib.PureWindowsPath}
        return _path(pure[name]) if name in pure else None
    if (module, name) in (("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")):
        return _reconstructor
    return None


# Module paths under which Lightning versions pickled AttributeDict.
_ATTRIBUTE_DICT_MODULES = (
    "pytorch_lightning.utilities.parsing",
    "lightning.fabric.utilities.data",
    "lightning_fabric.utilities.data",
    "lightning.pytorch.utilities.parsing",
)


# --- placeholders ----------------------------------------------------------------------------


class Placeholder:
    """An object of a class the reader does not know: what the file asked for, never called."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name}>"


def _placeholder_type(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"__module__": "placeholder." + module, "global_name": f"{module}.{name}"})


def runs_code(global_name: str) -> bool:
    """Whether a global exists to run code or touch the system (see ``CODE_RUNNING_MODULES``)."""
    module, _, name = global_name.rpartition(".")
    parts = module.split(".")
    in_module = any(".".join(parts[:i]) in CODE_RUNNING_MODULES for i in range(1, len(parts) + 1))
    return in_module or name in CODE_RUNNING_NAMES


# --- the unpickler -------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, persistent_load) -> None:
        super().__init__(file, encoding="latin1")
        self._persistent = persistent_load
        self.unknown: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed(module, name)
        if allowed is not None:
            return allowed
        key = f"{module}.{name}"
        if key not in self.unknown:
            self.unknown[key] = _placeholder_type(module, name)
        return self.unknown[key]

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


_MAX_DEPTH = 500


def restricted_load(
    data: io.BufferedIOBase, persistent_load: Callable[[Any], Any], source: str
) -> tuple[Any, list[tuple[str, str]]]:
    """Unpickle one object with the allowlist: ``(plain tree, [(placeholder global, where), ...])``.

    Raises ``UnsafeCheckpointError`` if the pickle names a code-running global anywhere (its places
    are named where the tree holds it), ``CheckpointError`` if it cannot be read.
    """
    unpickler = _RestrictedUnpickler(data, persistent_load)
    try:
        obj = unpickler.load()
    except (UnsafeCheckpointError, CheckpointError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        _refuse_code(unpickler.unknown, [], source)  # a code global explains the failure better than its symptom
        raise CheckpointError(f"{source}: cannot unpickle ({type(err).__name__}: {err})") from None
    except RecursionError:
        raise CheckpointError(f"{source}: nested too deeply to read") from None
    placeholders: list[tuple[str, str]] = []
    tree = _to_plain(obj, placeholders)
    _refuse_code(unpickler.unknown, placeholders, source)
    return tree, placeholders


def _refuse_code(unknown: Mapping[str, type], placeholders: list[tuple[str, str]], source: str) -> None:
    dangerous = sorted(k for k in unknown if runs_code(k))
    if not dangerous:
        return
    places = {name: [where for g, where in placeholders if g == name] for name in dangerous}
    named = "; ".join(f"{n} (at {', '.join(places[n][:3]) or 'an argument of another object'})" for n in dangerous)
    raise UnsafeCheckpointError(
        f"refusing {source}: it asks to call {named}, which a checkpoint has no reason to do. "
        "Nothing from the file was run."
    )


def _to_plain(tree: Any, placeholders: list[tuple[str, str]], where: str = "", depth: int = 0) -> Any:
    """Stand-ins -> plain values (dicts, NumPy objects); placeholders collected with their place."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"nested more than {_MAX_DEPTH} levels deep at {where or 'the top'}")
    if isinstance(tree, (_NumpyArray, _NumpyDtype)):
        try:
            return tree.resolve()
        except (CheckpointError, ValueError, TypeError):  # object arrays, records: kept, reported
            tree = _placeholder_type("numpy", "ndarray" if isinstance(tree, _NumpyArray) else "dtype")()
    if isinstance(tree, Placeholder):
        placeholders.append((tree.global_name, where or "(top level)"))
        return tree
    if isinstance(tree, Mapping):
        return {k: _to_plain(v, placeholders, f"{where}[{k!r}]", depth + 1) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [_to_plain(v, placeholders, f"{where}[{i}]", depth + 1) for i, v in enumerate(tree)]
        return items if isinstance(tree, list) else tuple(items)
    if isinstance(tree, (set, frozenset)):
        return type(tree)(_to_plain(v, placeholders, f"{where}{{}}", depth + 1) for v in tree)
    return tree


__all__ = [
    "CODE_RUNNING_MODULES",
    "CODE_RUNNING_NAMES",
    "CheckpointError",
    "Placeholder",
    "StorageRef",
    "StorageType",
    "TensorRef",
    "UnsafeCheckpointError",
    "element_size",
    "restricted_load",
    "runs_code",
]
