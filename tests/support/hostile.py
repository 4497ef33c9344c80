"""Hostile and broken files, built the way an attacker (or a crashed disk) would: small files that
state big sizes, streams whose numbers lie, headers that claim what the file cannot hold.

Each ``Case`` names the file, how to build it, the package's calls that must refuse it and the
error (type and a fragment of its message) they must raise. ``tests/support/hostile_battery.py``
tries them all in one process and measures its peak memory.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from pretrain import read_checkpoint, write_random_checkpoint

GB = 10**9


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], None]  # writes the file at the given path
    calls: tuple[str, ...]  # names in hostile_battery.CALLS
    error: str | None  # the exception class every call must raise (None: the call must succeed)
    fragment: str  # a piece of its message


# --- pickles by hand (protocol 2 opcodes, and protocol 4's BINBYTES8 and FRAME) ------------------
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _call(module: str, name: str, argument: int) -> bytes:
    return _global(module, name) + _int(argument) + b"\x85R"  # the argument in a 1-tuple, then the call


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def torch_zip(
    pickle_bytes: bytes, storages: dict[str, bytes] | None = None, *, method: int = zipfile.ZIP_STORED
) -> bytes:
    """A zip laid out as ``torch.save`` writes one: ``archive/data.pkl``, ``archive/data/<key>``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pickle_bytes, compress_type=method)
        z.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def _patch_central(archive: bytes, member: str, **fields: int) -> bytes:
    """Rewrite fields of one member's central-directory entry (and local header): the sizes a zip
    reader trusts, the flag bits, the compression method."""
    data = bytearray(archive)
    offsets = {"flags": (8, "<H"), "method": (10, "<H"), "compressed": (20, "<I"), "size": (24, "<I")}
    name = member.encode()
    central = data.find(b"PK\x01\x02" + b"")
    while central != -1:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + name_len]) == name:
            local = struct.unpack_from("<I", data, central + 42)[0]
            for field, value in fields.items():
                at, fmt = offsets[field]
                struct.pack_into(fmt, data, central + at, value)
                struct.pack_into(fmt, data, local + at - 2, value)  # the local header lacks "version made by"
            return bytes(data)
        central = data.find(b"PK\x01\x02", central + 4)
    raise KeyError(member)


class ForgedTensor:
    """Pickles as torch's tensor rebuild call with the arguments given, whatever they are: what
    ``torch.save`` writes for a tensor, with the sizes and strides an attacker chose."""

    def __init__(self, size, stride, offset=0, numel: int = 4, dtype=torch.float32) -> None:
        self.storage = torch.zeros(numel, dtype=dtype).untyped_storage()
        self.args = (offset, size, stride)
        self.dtype = dtype

    def __reduce__(self):
        from torch.storage import TypedStorage

        typed = TypedStorage(wrap_storage=self.storage, dtype=self.dtype, _internal=True)
        return torch._utils._rebuild_tensor_v2, (typed, *self.args, False, OrderedDict())


def _save(obj, path: Path, **options) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated; torch.save still writes it
        torch.save(obj, path, **options)


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


# --- checkpoints -----------------------------------------------------------------------------------
def _nested_dicts(path: Path) -> None:
    tree: dict = {}
    for _ in range(40):  # each level's two keys point at the level below: 2^40 paths in a few kB
        tree = {"k" * 200: tree, "j" * 200: tree}
    _save({"state_dict": tree}, path)


def _deep_list(path: Path) -> None:
    # 500 empty lists on the stack, then 499 APPENDs: each into the one below, 499 deep (by opcodes:
    # Python's own pickler would hit its recursion limit writing it)
    lists = b"]" * 500 + b"a" * 499
    body = b"}" + _str("state_dict") + b"}" + _str("x") + lists + b"s" + b"s"
    path.write_bytes(torch_zip(_pickle(body)))


def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def _tuple_dag(levels: int) -> bytes:
    """An empty dict, then the key: a tuple of the tuple below twice, ``levels`` deep (2^levels
    steps to hash), left on the stack for a SETITEM."""
    body = b"}" + b")" + _put(0) + b"0"
    for i in range(1, levels + 1):
        body += _get(i - 1) + _get(i - 1) + b"\x86" + _put(i) + b"0"  # TUPLE2, memoized, popped
    return body + _get(levels)


def _str_of_list_dag(levels: int) -> bytes:
    """``{'a': str(L)}`` where L is a list of the list below twice, ``levels`` deep."""
    body = b"]" + _put(0) + b"0"
    for i in range(1, levels + 1):
        body += b"](" + _get(i - 1) + _get(i - 1) + b"e" + _put(i) + b"0"
    return body + b"}" + _str("a") + _global("builtins", "str") + _get(levels) + b"\x85R" + b"s"


def _legacy_stream(obj: bytes, storage_keys: list[str], tail: bytes) -> bytes:
    import pickle

    magic = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, 2)
    return magic + info + obj + pickle.dumps(storage_keys, 2) + tail


def _legacy_with(pickle_bytes: bytes) -> Callable[[Path], None]:
    return _write(_legacy_stream(pickle_bytes, [], b""))


def _legacy_view(offset: int) -> Callable[[Path], None]:
    """A legacy tensor over a view ``(key, offset, size)`` of its storage (torch < 1.6 wrote views)."""
    pid = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu") + _int(4)
    pid += b"(" + _str("1") + _int(offset) + _int(4) + b"t" + b"t" + b"Q"
    rebuild = _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _int(0) + b"(" + _int(4) + b"t"
    rebuild += b"(" + _int(1) + b"t" + b"\x89" + _global("collections", "OrderedDict") + b")R" + b"tR"
    obj = _pickle(b"}" + _str("w") + rebuild + b"s")
    return _write(_legacy_stream(obj, ["0"], struct.pack("<q", 4) + bytes(16)))


def _storage_not_multiple(path: Path) -> None:
    buffer = io.BytesIO()
    _save({"w": torch.zeros(4)}, buffer)
    src, out = zipfile.ZipFile(buffer), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:15] if "/data/" in item.filename else data)
    path.write_bytes(out.getvalue())


def _real_tiny(path: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    write_random_checkpoint(path, "tiny")
    tree = read_checkpoint(path)
    state = tree["state_dict"]
    for key in list(state):
        state[key] = change(key, state[key])
    _save(tree, path)


def _nan_weight(key: str, value: torch.Tensor) -> torch.Tensor:
    return value.clone().fill_(float("nan")) if key.endswith("blocks.0.attn.qkv.weight") else value


def _legacy_count(count: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        buffer = io.BytesIO()
        _save({"w": torch.zeros(4)}, buffer, _use_new_zipfile_serialization=False)
        data = bytearray(buffer.getvalue())
        struct.pack_into("<q", data, len(data) - 16 - 8, count)  # the storage's element count, before its 16 bytes
        path.write_bytes(bytes(data))

    return build


def _zip_entry_claim(path: Path) -> None:
    buffer = io.BytesIO()
    _save({"w": torch.zeros(4)}, buffer)
    member = next(n for n in zipfile.ZipFile(buffer).namelist() if "/data/" in n)
    path.write_bytes(_patch_central(buffer.getvalue(), member, compressed=1_500_000_000, size=1_500_000_000))


def _deflate_bomb(*, lie: bool) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        # a pickle that is one long run of a no-op opcode... inflated past the 64 MiB pickle limit
        body = _pickle(b"N" + b"0N" * (36 * 2**20) + b"0")
        data = torch_zip(body, method=zipfile.ZIP_DEFLATED)
        if lie:  # the header says 1 kB: the limit must hold while inflating, not just on the header
            data = _patch_central(data, "archive/data.pkl", size=1000)
        path.write_bytes(data)

    return build


def _safetensors(meta_change: dict[str, str | None]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        from safetensors.torch import save_file

        from pretrain.training.train import export_teacher

        ckpt = path.with_suffix(".ckpt")
        write_random_checkpoint(ckpt, "tiny")
        export_teacher(ckpt, path)
        ckpt.unlink()
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        for key, value in meta_change.items():
            if value is None:
                meta.pop(key)
            else:
                meta[key] = value
        save_file(tensors, str(path), metadata=meta)

    return build


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


CHECKPOINTS = [
    Case("bytearray_claim", _write(torch_zip(_pickle(_call("builtins", "bytearray", 1_700_000_000)))),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "bytearray"),
    Case("bytes8_claim", _write(torch_zip(b"\x80\x04\x8e" + struct.pack("<Q", 1_500_000_000) + b"abc.")),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "pickle"),
    Case("memo_at_2_26", _write(torch_zip(_pickle(b"N" + b"r" + struct.pack("<I", 2**26)))),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "memo"),
    # torch.save writes an expand()-ed tensor this way: it loads as a view of its one element, as
    # torch.load gives it, in no memory (cloning it took 1.6 GB)
    Case("stride_0_tensor", lambda p: _save({"w": ForgedTensor((400_000_000,), (0,), numel=1)}, p),
         ("read_checkpoint",), None, ""),
    Case("stride_past_storage", lambda p: _save({"w": ForgedTensor((3, 2), (2, 1), numel=4)}, p),
         ("read_checkpoint",), "CheckpointError", "reaches element 6 of 4"),
    Case("tuple_dag_as_dict_key", _write(torch_zip(_pickle(_tuple_dag(40) + b"N" + b"s"))),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "through shared parts"),
    Case("str_of_list_dag", _write(torch_zip(_pickle(_str_of_list_dag(40)))),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "only of plain values"),
    Case("two_million_empty_sets_deflated", _write(torch_zip(b"\x80\x04](" + b"\x8f" * 2_000_000 + b"e.",
                                                             method=zipfile.ZIP_DEFLATED)),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "MiB of objects"),
    Case("legacy_view_before_its_storage", _legacy_view(-1_000_000),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "unreadable view"),
    Case("legacy_bytes_claiming_50_gb", _legacy_with(b"\x80\x04\x8e" + struct.pack("<Q", 50 * GB) + b"x."),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "bytes8"),
    Case("float_shape", lambda p: _save({"w": ForgedTensor((2.5,), (1,))}, p),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "2.5"),
    Case("string_shape", lambda p: _save({"w": ForgedTensor(("abc",), (1,))}, p),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "abc"),
    Case("negative_offset", lambda p: _save({"w": ForgedTensor((2,), (1,), offset=-3)}, p),
         ("read_checkpoint",), "CheckpointError", "-3"),
    Case("zip_entry_claims_1_5_gb", _zip_entry_claim,
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "1,500,000,000"),
    Case("deflate_bomb_stated", _deflate_bomb(lie=False),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "data.pkl"),
    Case("deflate_bomb_lying", _deflate_bomb(lie=True),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "data.pkl"),
    Case("nested_dicts_sharing_keys", _nested_dicts,
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "counting shared ones each time"),
    Case("list_499_deep", _deep_list, ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "deep"),
    Case("storage_not_a_multiple", _storage_not_multiple, ("read_checkpoint",), "CheckpointError", "15 bytes"),
    Case("unsupported_compression", _write(torch_zip(_pickle(b"}"), method=zipfile.ZIP_BZIP2)),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "compression method 12"),
    Case("encrypted_flag", _write(_patch_central(torch_zip(_pickle(b"}")), "archive/data.pkl", flags=1)),
         ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "encrypted"),
    Case("legacy_negative_count", _legacy_count(-1), ("read_checkpoint",), "CheckpointError", "-1 elements"),
    Case("legacy_huge_count", _legacy_count(2**40), ("read_checkpoint",), "CheckpointError", "1,099,511,627,776"),
    Case("int64_weights", lambda p: _real_tiny(p, lambda k, v: v.long()),
         ("inspect", "load_encoder"), "CheckpointError", "int64"),
    Case("nan_weights", lambda p: _real_tiny(p, _nan_weight), ("load_encoder",), "CheckpointError", "NaN"),
    Case("safetensors_without_num_heads", _safetensors({"num_heads": None}),
         ("inspect", "load_encoder"), "CheckpointError", "num_heads"),
    Case("safetensors_crop_abc", _safetensors({"crop_seconds": "abc"}),
         ("inspect", "load_encoder"), "CheckpointError", "abc"),
    Case("safetensors_heads_minus_1", _safetensors({"num_heads": "-1"}),
         ("inspect", "load_encoder"), "CheckpointError", "num_heads"),
    Case("safetensors_heads_true", _safetensors({"num_heads": "True"}),
         ("inspect", "load_encoder"), "CheckpointError", "num_heads"),
    Case("fifo_checkpoint", _fifo, ("inspect", "load_encoder", "read_checkpoint"), "CheckpointError", "regular file"),
    Case("directory_checkpoint", _directory, ("inspect", "load_encoder", "read_checkpoint"),
         "CheckpointError", "directory"),
]  # fmt: skip


# --- audio -------------------------------------------------------------------------------------------
def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _wav_at_1_hz(path: Path) -> None:
    soundfile.write(path, _tone(1.25), 16000, subtype="PCM_16")  # 40 kB
    data = bytearray(path.read_bytes())
    struct.pack_into("<II", data, 24, 1, 2)  # fmt chunk: sample rate 1 Hz, 2 bytes per second
    path.write_bytes(bytes(data))


def _flac_claiming(total: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        soundfile.write(path, _tone(0.5), 16000, format="FLAC", subtype="PCM_16")
        data = bytearray(path.read_bytes())
        assert data[:4] == b"fLaC"
        packed = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels, bits, total samples (36)
        packed = (packed & ~(2**36 - 1)) | total
        data[18:26] = packed.to_bytes(8, "big")
        path.write_bytes(bytes(data))

    return build


def _long_wav(path: Path) -> None:
    soundfile.write(path, _tone(3.0), 16000, subtype="PCM_16")  # over the battery's 2 s duration budget


AUDIO = [
    Case("wav_declaring_1_hz", _wav_at_1_hz, ("load_audio", "read_crops"), "AudioFileError", "1 Hz"),
    Case("flac_claiming_68_7_g_samples", _flac_claiming(2**36 - 1), ("load_audio", "read_crops"),
         "AudioFileError", "68,719,476,735"),
    Case("fifo_audio", _fifo, ("load_audio", "read_crops"), "AudioFileError", "not a regular file"),
    Case("directory_audio", _directory, ("load_audio", "read_crops"), "AudioFileError", "directory"),
    Case("not_audio", _write(b"RIFF\x24\x00\x00\x00WAVEfmt garbage"), ("load_audio", "read_crops"),
         "AudioFileError", "cannot decode"),
    Case("float_wav_at_1e20", lambda p: soundfile.write(p, _tone(1.0) * 1e20, 16000, subtype="FLOAT"),
         ("load_audio", "read_crops"), "AudioFileError", "reach 3e+19"),  # the tone peaks at 0.3
    Case("over_duration_budget", _long_wav, ("load_audio",), "AudioFileError", "ATST_MAX_AUDIO_SECONDS"),
]  # fmt: skip

ALL = {case.name: case for case in CHECKPOINTS + AUDIO}


def file_name(case: Case) -> str:
    if "safetensors" in case.name:
        return case.name + ".safetensors"
    if case in AUDIO:
        return case.name + (".flac" if "flac" in case.name else ".wav")
    return case.name + ".ckpt"


def build_all(folder: Path) -> dict[str, Path]:
    """Every case's file in ``folder``: name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in ALL.values():
        path = folder / file_name(case)
        case.build(path)
        paths[case.name] = path
    return paths
