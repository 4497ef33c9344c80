"""``torch.save`` files read lazily: the pickle now (restricted, ``safe_pickle``), tensor data on demand.

``read_torch_file(path)`` returns a ``TorchFile`` whose tree holds ``TensorRef`` leaves;
``TorchFile.tensor(ref)`` reads that tensor's storage straight from the file into a fresh
buffer, checking the zip member's CRC. A caller that needs only a teacher encoder therefore
reads only the encoder's bytes: loading it from a 1.46 GB training checkpoint costs the
memory of the encoder, not of the file (``benchmarks/checkpoint_memory.py``).

Both formats ``torch.save`` has written are read: the zip archive (torch >= 1.6:
``<name>/data.pkl``, ``<name>/data/<key>`` stored uncompressed, ``<name>/byteorder``) and the
legacy stream (magic number, protocol, system info and object pickles, a pickled list of
storage keys, then each storage as an 8-byte element count and its bytes).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.model.safe_pickle import (
    CheckpointError,
    StorageRef,
    StorageType,
    TensorRef,
    element_size,
    restricted_load,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_LOCAL_HEADER = 30  # bytes before a member's name and extra field


@dataclass
class TorchFile:
    """A checkpoint file read without its tensor data.

    ``tree`` is the unpickled object with ``TensorRef`` leaves; ``placeholders`` lists
    ``(global, where)`` for every object of a class the reader does not know (inert, never
    called; see ``safe_pickle``).
    """

    path: Path
    tree: Any
    placeholders: list[tuple[str, str]] = field(default_factory=list)
    locations: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # key -> (offset, bytes)
    crc: dict[str, int] = field(default_factory=dict, repr=False)
    big_endian: bool = False

    def tensor(self, ref: TensorRef) -> Tensor:
        """Read one tensor from the file into fresh memory."""
        if len(ref.shape) != len(ref.stride) or any(s < 0 for s in (*ref.shape, *ref.stride, ref.offset)):
            raise CheckpointError(f"{self.path}: a tensor has an invalid shape {ref.shape} / stride {ref.stride}")
        extent = ref.offset + sum((n - 1) * st for n, st in zip(ref.shape, ref.stride, strict=True)) + 1
        if ref.numel and extent > ref.storage.numel:
            raise CheckpointError(f"{self.path}: a tensor reaches past the end of storage {ref.storage.key}")
        storage = self._read_storage(ref.storage)
        view = storage.as_strided(ref.shape, ref.stride, ref.offset)
        if view.numel() != storage.numel() or not view.is_contiguous():
            view = view.clone()  # a slice must not keep its whole storage alive
        return view

    def _read_storage(self, storage: StorageRef) -> Tensor:
        if storage.key not in self.locations:
            raise CheckpointError(f"{self.path}: storage {storage.key} is missing from the file")
        offset, nbytes = self.locations[storage.key]
        width = element_size(storage.dtype)
        if nbytes < storage.numel * width:
            raise CheckpointError(f"{self.path} is corrupt: storage {storage.key} is shorter than its tensors")
        buffer = bytearray(nbytes)
        with open(self.path, "rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != nbytes:
                raise CheckpointError(f"{self.path} is truncated (storage {storage.key})")
        expected = self.crc.get(storage.key)
        if expected and zlib.crc32(buffer) != expected:
            raise CheckpointError(f"{self.path} is corrupt: storage {storage.key} fails its CRC check")
        if nbytes == 0:
            return torch.empty(0, dtype=storage.dtype)
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
        if self.big_endian and width > 1:
            flat = flat.view(-1, width).flip(1).reshape(-1)
        return flat.view(storage.dtype)

    def materialize(self) -> Any:
        """The whole tree with every tensor read (small files, tests, conversions)."""
        return map_tensor_refs(self.tree, self.tensor)


def map_tensor_refs(tree: Any, fn) -> Any:
    """``tree`` with every ``TensorRef`` leaf replaced by ``fn(ref)``."""
    if isinstance(tree, TensorRef):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensor_refs(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_tensor_refs(v, fn) for v in tree]
    if isinstance(tree, tuple):
        return tuple(map_tensor_refs(v, fn) for v in tree)
    return tree


def iter_tensor_refs(tree: Any) -> Iterator[TensorRef]:
    """Every ``TensorRef`` of a tree."""
    if isinstance(tree, TensorRef):
        yield tree
    elif isinstance(tree, Mapping):
        for v in tree.values():
            yield from iter_tensor_refs(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from iter_tensor_refs(v)


def _storage_loader(root: str, seen: dict[str, StorageRef]):
    """The persistent-id hook: ``('storage', type, key, location, numel[, view])`` -> ``StorageRef``."""

    def load(pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]  # location ignored: everything is read to the CPU
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage {key} has an unknown type")
        ref = seen.setdefault(str(key), StorageRef(str(key), storage_type.dtype, int(numel)))
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy views: (view_key, offset in elements, size) into the root storage
            return StorageRef(ref.key, ref.dtype, ref.numel, view_offset=int(view[1]))
        return ref

    return load


def _zip_data_offset(f: io.BufferedIOBase, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    header = f.read(ZIP_LOCAL_HEADER)
    if len(header) != ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"bad zip member header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + ZIP_LOCAL_HEADER + name_len + extra_len


def _read_zip(path: Path) -> TorchFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint is truncated or corrupt (its zip directory is unreadable): {path} ({err})"
        ) from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        big_endian = root + "byteorder" in members and archive.read(root + "byteorder").strip() == b"big"
        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as err:
            raise CheckpointError(f"checkpoint is truncated or corrupt: {path} ({err})") from None
    storages: dict[str, StorageRef] = {}
    tree, placeholders = restricted_load(io.BytesIO(data), _storage_loader(root, storages), str(path))
    locations, crc = {}, {}
    with open(path, "rb") as f:
        for key in storages:
            info = members.get(f"{root}data/{key}")
            if info is None:
                raise CheckpointError(f"{path} is corrupt: storage {key} is missing")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: storage {key} is compressed, which torch never writes")
            locations[key] = (_zip_data_offset(f, info), info.file_size)
            crc[key] = info.CRC
    return TorchFile(path, tree, placeholders, locations, crc, big_endian)


def _read_legacy(path: Path) -> TorchFile:
    source = str(path)
    storages: dict[str, StorageRef] = {}
    load_storage = _storage_loader("", storages)
    with open(path, "rb") as f:
        magic, _ = restricted_load(f, load_storage, source)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"not a PyTorch checkpoint (a pickle, but not torch's format): {path}")
        _protocol, _ = restricted_load(f, load_storage, source)
        sys_info, _ = restricted_load(f, load_storage, source)
        if not isinstance(sys_info, Mapping):
            raise CheckpointError(f"not a PyTorch checkpoint (a pickle, but not torch's format): {path}")
        tree, placeholders = restricted_load(f, load_storage, source)
        keys, _ = restricted_load(f, load_storage, source)
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: its list of storages is unreadable")
        locations = {}
        for key in map(str, keys):
            raw = f.read(8)
            if key not in storages or len(raw) != 8:
                raise CheckpointError(f"{path} is truncated or corrupt (storage {key})")
            nbytes = struct.unpack("<q", raw)[0] * element_size(storages[key].dtype)
            locations[key] = (f.tell(), nbytes)
            f.seek(nbytes, os.SEEK_CUR)
        if f.tell() > path.stat().st_size:
            raise CheckpointError(f"{path} is truncated (its storages run past the end of the file)")
    return TorchFile(path, tree, placeholders, locations)


def read_torch_file(path: str | os.PathLike) -> TorchFile:
    """Read a ``torch.save`` file (zip or legacy) without its tensor data and without running code."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if head.startswith(b"PK"):
        return _read_zip(path)
    if head[:1] == b"\x80":
        return _read_legacy(path)
    raise CheckpointError(f"not a PyTorch checkpoint (neither a zip archive nor a pickle): {path}")
