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

Sizes are bounded before CPython's unpickler allocates for them (``pretrain.model.limits``): a
pre-scan of the opcodes (``pickletools.genops``) refuses a pickle longer than it may be, with more
opcodes than it may have, with a byte string, text or frame longer than the bytes that remain, or
with a memo index beyond what it has written (the C unpickler sizes its memo to the largest index
and its strings to the stated length before reading them). The allowed constructors charge what
they copy to a per-pickle meter, and the tree is made plain with depth and node limits that fire
long before Python's recursion limit. Whatever goes wrong, the caller sees a ``CheckpointError``.
"""

from __future__ import annotations

import collections
import contextvars
import io
import pathlib
import pickle
import pickletools
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrain.model.limits import (
    MAX_COPY_BYTES,
    MAX_HASH_WORK,
    MAX_NESTING,
    MAX_PICKLE_BYTES,
    MAX_PICKLE_OBJECT_BYTES,
    MAX_PICKLE_OPS,
    MAX_PLAIN_BYTES,
    MAX_TENSOR_DIMS,
    MAX_TREE_NODES,
    MiB,
)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (empty, truncated, corrupt, foreign); the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks for a global that exists to run code; nothing from it was called."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 60, 60, 40
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 4


def short_repr(value: Any) -> str:
    """A repr of a value from a file that stays short whatever the value (huge ints, deep nesting)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a repr of a hostile value may fail in any way; say what it is
        return f"<{type(value).__name__}>"


class _OverBudgetError(CheckpointError):
    """A file that asks for more memory than ``pretrain.model.limits`` allows."""


class _Meter:
    """What the allowed constructors of one pickle have copied: a file cannot make them copy a
    shared object a million times (``list(x)`` over one memoised list, say)."""

    def __init__(self) -> None:
        self.copied = 0

    def charge(self, nbytes: int, what: str) -> None:
        self.copied += nbytes
        if self.copied > MAX_COPY_BYTES:
            raise _OverBudgetError(
                f"its objects ask for more than {MAX_COPY_BYTES // MiB} MiB of copies (the last one: {what})"
            )


_METER: contextvars.ContextVar[_Meter] = contextvars.ContextVar("pickle_meter")


def _charge(value: Any, what: str) -> None:
    meter = _METER.get(None)
    if meter is not None:
        size = len(value) if isinstance(value, (str, bytes, bytearray)) else 8
        if isinstance(value, (list, tuple, set, frozenset, dict)):
            size = 8 * len(value)
        meter.charge(size, what)


def _index(value: Any, what: str) -> int:
    """A non-negative integer from the file (NumPy integers allowed, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise CheckpointError(f"{what} is {short_repr(value)}, not a non-negative integer")
    return int(value)


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) > MAX_TENSOR_DIMS:
        raise CheckpointError(f"{what} is {short_repr(value)}, not a tuple of at most {MAX_TENSOR_DIMS} sizes")
    return tuple(_index(v, what) for v in value)


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
    shape, strides = _dims(size, "a tensor's shape"), _dims(stride, "a tensor's stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"a tensor's shape {shape} and stride {strides} differ in length")
    return TensorRef(storage, storage.view_offset + _index(offset, "a tensor's offset"), shape, strides, storage.dtype)


def _rebuild_tensor_v3(
    storage: StorageRef, offset: int, size: tuple, stride: tuple, requires_grad: bool, hooks: Any, dtype: Any, *rest
) -> TensorRef:
    """Untyped storage (bytes) reinterpreted as ``dtype``: offsets count elements of ``dtype``."""
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"a tensor names {dtype!r} as its dtype")
    ref = _rebuild_tensor(storage, offset, size, stride)
    width, nbytes = element_size(dtype), storage.numel * element_size(storage.dtype)
    if nbytes % width:
        raise CheckpointError(f"storage {storage.key} holds {nbytes} bytes, not a whole number of {dtype} elements")
    typed = StorageRef(storage.key, dtype, nbytes // width)
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
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.ndarray:
        if self.array is not None:  # one array referred to from many places is built once
            return self.array
        try:
            _version, shape, dtype, fortran, data = self.state
        except (TypeError, ValueError):
            raise CheckpointError("a numpy array in the file has an unknown layout") from None
        if not isinstance(dtype, _NumpyDtype) or not isinstance(data, (bytes, bytearray)):
            raise CheckpointError("a numpy array in the file does not hold plain numbers")
        _charge(data, "a numpy array")
        array = np.frombuffer(data, dtype=dtype.resolve())
        self.array = array.reshape(_dims(shape, "a numpy array's shape"), order="F" if fortran else "C").copy()
        return self.array


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 arrays: ``numpy._core.numeric._frombuffer``."""
    if not isinstance(buffer, (bytes, bytearray)):
        raise CheckpointError(f"a numpy array's buffer is {type(buffer).__name__}, not bytes")
    array = _NumpyArray()
    array.state = (1, shape, dtype, order == "F", buffer)
    return array.resolve()


def _numpy_dtype_class(name: str):
    def make(*_args: Any) -> _NumpyDtype:
        return _NumpyDtype(np.dtype(getattr(np.dtypes, name)).str)

    return make


# --- other data types ------------------------------------------------------------------------


class _Namespace(dict):
    """``argparse.Namespace`` read as the dict of its attributes."""

    def __init__(self, *args: Any) -> None:  # built by NEWOBJ + BUILD; called directly, it holds nothing
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            _charge(dict(state), type(self).__name__)
            self.update(state)


class _AttributeDict(_Namespace):
    """Lightning's ``AttributeDict`` (a dict) without importing Lightning."""


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise CheckpointError("_codecs.encode is allowed for latin-1 text only")
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise CheckpointError(f"_codecs.encode is allowed for latin-1 text only, got {short_repr(encoding)}")
    _charge(text, "a byte string")
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


_SCALARS = (int, float, complex, str, bytes, bool)
_SCALAR_ARGUMENTS = (int, float, complex, str, bytes, bytearray, bool, type(None))


def _charge_hashing(items: list | tuple, what: str) -> None:
    """Charge the objects a set or dict built from ``items`` hashes (tuples within tuples, counted
    each time they are reached), before it hashes them; a tuple built of itself is refused."""
    visits, todo = 0, [v for v in items if isinstance(v, tuple)]
    while todo:
        value = todo.pop()
        visits += 1 + len(value)
        if visits > MAX_TREE_NODES:
            raise CheckpointError(f"{what} hashes objects that reach more than {MAX_TREE_NODES:,} others")
        todo.extend(v for v in value if isinstance(v, tuple))
    meter = _METER.get(None)
    if meter is not None:
        meter.charge(8 * visits, what)


def _copying(kind: type) -> Callable[..., Any]:
    """A builtin constructor of plain data, as a function (so NEWOBJ cannot call ``kind.__new__``
    with arguments of the file's choosing), that charges what it copies; ``bytes(n)``-style sizes
    are refused."""

    def make(*args: Any) -> Any:
        if len(args) > 3:
            raise CheckpointError(f"builtins.{kind.__name__} called with {len(args)} arguments")
        if kind in (bytes, bytearray, list, tuple, set, frozenset, dict) and args and isinstance(args[0], int):
            raise CheckpointError(f"builtins.{kind.__name__}({short_repr(args[0])}) asks for a size, not data")
        if kind in _SCALARS and not all(isinstance(a, _SCALAR_ARGUMENTS) for a in args):
            # str() of a container walks it whole: a list built of itself is exponential
            raise CheckpointError(f"builtins.{kind.__name__} of a {type(args[0]).__name__}: only of plain values")
        for arg in args:
            _charge(arg, f"builtins.{kind.__name__}")
            if kind in (set, frozenset, dict) and isinstance(arg, (list, tuple)):
                _charge_hashing(arg, f"builtins.{kind.__name__}")
        return kind(*args)

    make.__name__ = kind.__name__
    return make


# Constructors of plain data: calling them builds a value and nothing else.
_PURE_BUILTINS = {
    t.__name__: _copying(t)
    for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bytearray, bool, slice)
} | {"object": object}


def _torch_size(dims: Any = ()) -> torch.Size:
    return torch.Size(_dims(dims, "a torch.Size"))


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    for arg in args:
        _charge(arg, "collections.OrderedDict")
    return collections.OrderedDict(*args)


def _device(*args: Any) -> torch.device:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], (str, int)) or isinstance(args[0], bool):
        raise CheckpointError(f"torch.device{short_repr(args)} is not a device")
    try:
        return torch.device(*args)
    except (RuntimeError, TypeError, ValueError, OverflowError):
        raise CheckpointError(f"torch.device{short_repr(args)} is not a device") from None


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
            return _torch_size
        if name == "device":
            return _device
        try:
            return _torch_dtype(name)
        except KeyError:
            return None
    if module == "collections" and name == "OrderedDict":
        return _ordered_dict
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
    module, name = module[:120], name[:120]  # names from the file: messages stay short
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


# Bytes CPython spends on what an opcode builds (``sys.getsizeof``, containers twice: the plain copy
# ``_to_plain`` makes of them); other opcodes cost ``_OP_BYTES_DEFAULT``. Strings add their length.
_OP_BYTES = {
    "EMPTY_DICT": 128, "DICT": 128, "EMPTY_LIST": 112, "LIST": 112, "EMPTY_SET": 432, "FROZENSET": 432,
    "EMPTY_TUPLE": 80, "TUPLE": 80, "TUPLE1": 96, "TUPLE2": 112, "TUPLE3": 128,
    "SETITEM": 80, "APPEND": 16, "ADDITEMS": 0, "SETITEMS": 0, "APPENDS": 0,
    "BININT": 32, "BININT1": 32, "BININT2": 32, "INT": 32, "LONG": 32, "LONG1": 32, "LONG4": 32,
    "BINFLOAT": 24, "FLOAT": 24, "REDUCE": 64, "NEWOBJ": 64, "NEWOBJ_EX": 64, "OBJ": 64, "INST": 64,
    "BUILD": 64, "PUT": 8, "BINPUT": 8, "LONG_BINPUT": 8, "MEMOIZE": 8,
}  # fmt: skip
_OP_BYTES_DEFAULT = 16
_PER_ITEM_BYTES = {"SETITEMS": 80, "APPENDS": 16, "ADDITEMS": 64, "DICT": 80, "LIST": 16, "FROZENSET": 64, "TUPLE": 8}
_MEMO_WRITES = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))
_MEMO_READS = frozenset(("GET", "BINGET", "LONG_BINGET"))
_TUPLES = frozenset(("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"))
_CALLS = frozenset(("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD"))
_MARK = object()
_WEIGHT_CAP = MAX_TREE_NODES + 1  # past it the exact count no longer matters


class _Weight:
    """Objects reached through one stack item, counting shared ones each time (what a hash, a
    comparison or a copy of it visits): a cell, so that memo entries see later APPENDs."""

    __slots__ = ("n",)

    def __init__(self, n: int = 1) -> None:
        self.n = n


def _pop_to_mark(stack: list, marks: list[int]) -> list:
    if not marks:
        raise CheckpointError("its pickle pops to a mark that was never set")
    at = marks.pop()
    items = stack[at + 1 :]
    del stack[at:]
    return items


def scan_pickle(stream: io.BufferedIOBase, source: str) -> int:
    """Run one pickle's opcodes from ``stream`` on a model of the unpickler's stack, building
    nothing; return the pickle's length.

    Refuses, as ``CheckpointError``, what would make CPython's unpickler allocate more than the
    file holds or run for hours: strings or frames longer than the bytes left (``genops`` reads
    them and finds them short), memo indices beyond the number of opcodes seen, too many opcodes,
    more than ``MAX_PICKLE_OBJECT_BYTES`` of objects (estimated per opcode), and objects that are
    hashed or handed to constructors while reaching, through shared parts, more than
    ``MAX_TREE_NODES`` objects (a tuple built of itself twice, 40 times over, takes 2^40 steps to
    hash). ``stream`` must not yield more than ``MAX_PICKLE_BYTES`` (``BoundedReader``).
    """
    start = stream.tell()
    ops = cost = work = 0
    stack: list = []
    marks: list[int] = []
    memo: dict[int, _Weight] = {}

    def hashed(items: list, what: str) -> None:
        """``items`` are hashed (dict keys, set members): each costs the objects it reaches."""
        nonlocal work
        for item in items:
            work += item.n
            if item.n > MAX_TREE_NODES or work > MAX_HASH_WORK:
                raise CheckpointError(
                    f"{source}: its pickle {what} objects that reach more than "
                    f"{min(item.n, MAX_TREE_NODES):,} others through shared parts (a structure built of itself)"
                )

    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            ops += 1
            name = opcode.name
            if ops > MAX_PICKLE_OPS:
                raise CheckpointError(f"{source}: its pickle has more than {MAX_PICKLE_OPS:,} operations")
            if name in _MEMO_WRITES and arg > ops:
                raise CheckpointError(f"{source}: its pickle writes memo entry {arg:,} after {ops:,} operations")
            if name == "FRAME" and arg > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{source}: its pickle declares a frame of {arg:,} bytes")
            cost += _OP_BYTES.get(name, _OP_BYTES_DEFAULT) + (len(arg) if isinstance(arg, (str, bytes)) else 0)
            # the stack: what the opcode pops, then what it pushes
            if name == "MARK":
                marks.append(len(stack))
                stack.append(_MARK)
                continue
            if name in _MEMO_WRITES or name == "MEMOIZE":
                if not stack:
                    raise CheckpointError(f"{source}: its pickle memoizes an empty stack")
                memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1]
                continue
            if name in _MEMO_READS:
                if arg not in memo:
                    raise CheckpointError(f"{source}: its pickle reads memo entry {arg:,}, never written")
                stack.append(memo[arg])
                continue
            if name == "DUP":
                stack.append(stack[-1])
                continue
            if name == "POP_MARK" or (name == "POP" and stack and stack[-1] is _MARK):
                _pop_to_mark(stack, marks)
                continue
            before = opcode.stack_before
            if pickletools.markobject in before:
                items = _pop_to_mark(stack, marks)
                below = [stack.pop() for _ in range(before.index(pickletools.markobject))][::-1]
            else:
                items, below = [stack.pop() for _ in range(len(before))][::-1], []
            if any(item is _MARK for item in items + below):
                raise CheckpointError(f"{source}: its pickle uses a mark as an object ({name})")
            cost += _PER_ITEM_BYTES.get(name, 0) * len(items)
            if name == "SETITEM":
                hashed(items[1:2], "uses as dict keys")
            elif name in ("SETITEMS", "DICT"):
                hashed(items[0::2], "uses as dict keys")
            elif name in ("ADDITEMS", "FROZENSET"):
                hashed(items, "puts in sets")
            if name in ("SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"):
                target = below[0] if below else items[0]
                added = items if below else items[1:]
                target.n = min(target.n + sum(item.n for item in added), _WEIGHT_CAP)
                stack.append(target)
                continue
            if name in _TUPLES or name in ("LIST", "DICT", "FROZENSET") or name in _CALLS:
                # a call's result may hold its arguments (``tuple(list)``, a rebuilt object)
                pushed = [_Weight(min(1 + sum(item.n for item in items + below), _WEIGHT_CAP))]
            else:
                pushed = [_Weight() for _ in opcode.stack_after]
            stack.extend(pushed)
            if cost > MAX_PICKLE_OBJECT_BYTES:
                raise CheckpointError(
                    f"{source}: its pickle builds more than {MAX_PICKLE_OBJECT_BYTES // MiB} MiB of objects "
                    f"(after {ops:,} operations)"
                )
    except (CheckpointError, NameError, AttributeError):  # the latter two: this reader's own bugs, never hidden
        raise
    except IndexError:
        raise CheckpointError(f"{source}: its pickle pops an empty stack (malformed)") from None
    except Exception as err:  # noqa: BLE001 - genops names the malformed opcode (short strings, no STOP)
        if getattr(stream, "left", None) == 0:
            raise CheckpointError(f"{source}: its pickle runs past {MAX_PICKLE_BYTES // MiB} MiB") from None
        raise CheckpointError(f"{source}: its pickle is truncated or malformed ({short_repr(str(err))})") from None
    return stream.tell() - start


class BoundedReader(io.RawIOBase):
    """A read-only view of ``file`` from its position, at most ``limit`` bytes long: reads asking
    for more get what is there, so a stated length never becomes an allocation of that length."""

    def __init__(self, file: io.BufferedIOBase, limit: int) -> None:
        self.file, self.left = file, limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # RawIOBase.read allocates ``size`` bytes first: a length stated in the file must not
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.file.read(size)
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        data = self.file.read(n)
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def tell(self) -> int:
        return self.file.tell()


def restricted_load(
    data: bytes, persistent_load: Callable[[Any], Any], source: str
) -> tuple[Any, list[tuple[str, str]]]:
    """Unpickle one pickle (its bytes) with the allowlist: ``(plain tree, [(placeholder global, where), ...])``.

    Raises ``UnsafeCheckpointError`` if the pickle names a code-running global anywhere (its places
    are named where the tree holds it), ``CheckpointError`` if it cannot be read or asks for more
    than ``pretrain.model.limits`` allows.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{source}: its pickle is {len(data):,} bytes, more than {MAX_PICKLE_BYTES // MiB} MiB")
    scan_pickle(io.BytesIO(data), source)
    unpickler = _RestrictedUnpickler(io.BytesIO(data), persistent_load)
    token = _METER.set(_Meter())
    try:
        obj = unpickler.load()
        placeholders: list[tuple[str, str]] = []
        tree = _to_plain(obj, placeholders)
    except CheckpointError as err:
        _refuse_code(unpickler.unknown, [], source)  # a code global explains the failure better than its symptom
        if str(err).startswith(source):
            raise
        raise type(err)(f"{source}: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{source}: nested too deeply to read") from None
    except Exception as err:  # noqa: BLE001 - nothing from the file ran; any failure is a malformed file
        _refuse_code(unpickler.unknown, [], source)
        raise CheckpointError(f"{source}: cannot unpickle ({type(err).__name__}: {short_repr(str(err))})") from None
    finally:
        _METER.reset(token)
    _refuse_code(unpickler.unknown, placeholders, source)
    return tree, placeholders


def _refuse_code(unknown: Mapping[str, type], placeholders: list[tuple[str, str]], source: str) -> None:
    dangerous = sorted(k for k in unknown if runs_code(k))
    if not dangerous:
        return
    places = {name: [where for g, where in placeholders if g == name] for name in dangerous[:5]}
    named = "; ".join(f"{n} (at {', '.join(places[n][:3]) or 'an argument of another object'})" for n in places)
    more = f" and {len(dangerous) - 5} more" if len(dangerous) > 5 else ""
    raise UnsafeCheckpointError(
        f"refusing {source}: it asks to call {named}{more}, which a checkpoint has no reason to do. "
        "Nothing from the file was run."
    )


def _place(where: tuple | None) -> str:
    """``(parent, key)`` links -> ``['a']['b'][0]``, shortened to stay readable."""
    keys = []
    while where is not None:
        where, key = where
        keys.append(f"[{short_repr(key)}]")
    text = "".join(reversed(keys)) or "(top level)"
    return text if len(text) <= 200 else text[:90] + " ... " + text[-90:]


def _to_plain(root: Any, placeholders: list[tuple[str, str]]) -> Any:
    """Stand-ins -> plain values (dicts, NumPy objects); placeholders collected with their place.

    Places are kept as links and written out only for placeholders, so a deep or wide tree costs no
    strings; ``MAX_NESTING`` and ``MAX_TREE_NODES`` bound the work (a shared object counts each
    time it is reached, so a small file of shared containers cannot expand into a huge tree).
    """
    visited = copied = 0

    def copy(nbytes: int) -> None:
        nonlocal copied
        copied += nbytes
        if copied > MAX_PLAIN_BYTES:
            raise CheckpointError(
                f"its containers take more than {MAX_PLAIN_BYTES // MiB} MiB to copy (counting shared ones each time)"
            )

    def plain(tree: Any, where: tuple | None, depth: int) -> Any:
        nonlocal visited
        visited += 1
        if visited > MAX_TREE_NODES:
            raise CheckpointError(f"it holds more than {MAX_TREE_NODES:,} objects (counting shared ones each time)")
        if depth > MAX_NESTING:
            raise CheckpointError(
                f"it nests containers more than {MAX_NESTING} deep (or in a cycle) at {_place(where)}"
            )
        if isinstance(tree, (_NumpyArray, _NumpyDtype)):
            try:
                return tree.resolve()
            except _OverBudgetError:
                raise
            except (CheckpointError, ValueError, TypeError):  # object arrays, records: kept, reported
                tree = _placeholder_type("numpy", "ndarray" if isinstance(tree, _NumpyArray) else "dtype")()
        if isinstance(tree, Placeholder):
            placeholders.append((tree.global_name, _place(where)))
            return tree
        if isinstance(tree, Mapping):
            copy(64 + 104 * len(tree))  # sys.getsizeof of a dict, per entry with its growth
            return {k: plain(v, (where, k), depth + 1) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            copy(56 + 8 * len(tree))
            items = [plain(v, (where, i), depth + 1) for i, v in enumerate(tree)]
            return items if isinstance(tree, list) else tuple(items)
        if isinstance(tree, (set, frozenset)):
            copy(216 + 32 * len(tree))
            return type(tree)(plain(v, (where, "{}"), depth + 1) for v in tree)
        return tree

    return plain(root, None, 0)


__all__ = [
    "CODE_RUNNING_MODULES",
    "CODE_RUNNING_NAMES",
    "CheckpointError",
    "Placeholder",
    "StorageRef",
    "StorageType",
    "TensorRef",
    "UnsafeCheckpointError",
    "BoundedReader",
    "element_size",
    "restricted_load",
    "runs_code",
    "scan_pickle",
    "short_repr",
]
