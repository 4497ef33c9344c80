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

Every size the file states is checked against what the file holds before anything is allocated
for it: zip members against the archive, data.pkl's inflated size against ``MAX_PICKLE_BYTES``
(read in chunks, so a small deflated member cannot inflate past it), each storage's element count
against its member, each tensor's extent against its storage (a tensor may not hold more elements
than its storage: no stride-0 expansion), and the bytes read or copied for tensors against a
budget of twice the file's size. Whatever goes wrong, the caller sees a ``CheckpointError``.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.model.limits import MAX_PICKLE_BYTES, MiB
from pretrain.model.safe_pickle import (
    BoundedReader,
    CheckpointError,
    StorageRef,
    StorageType,
    TensorRef,
    element_size,
    restricted_load,
    scan_pickle,
    short_repr,
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

    _storages: dict[str, Tensor] = field(default_factory=dict, repr=False)  # each storage is read once

    def check(self, ref: TensorRef) -> None:
        """Refuse a tensor whose layout does not fit its storage, before anything is read."""
        if ref.storage.key not in self.locations:
            raise CheckpointError(f"{self.path}: storage {short_repr(ref.storage.key)} is missing from the file")
        if ref.numel == 0:
            return
        extent = ref.offset + sum((n - 1) * st for n, st in zip(ref.shape, ref.stride, strict=True)) + 1
        if extent > ref.storage.numel:
            raise CheckpointError(
                f"{self.path}: a tensor over storage {short_repr(ref.storage.key)} (shape {ref.shape}, "
                f"stride {ref.stride}, offset {ref.offset:,}) reaches element {extent:,} of {ref.storage.numel:,}"
            )

    def tensor(self, ref: TensorRef) -> Tensor:
        """One tensor, as a view of its storage (read from the file once, whole, CRC-checked), as
        ``torch.load`` gives it: tied weights stay tied, slices and ``expand``-ed tensors cost only
        their storage, so no layout a file states can make a read larger than the file."""
        self.check(ref)
        if ref.numel == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        return self._storage(ref.storage).as_strided(ref.shape, ref.stride, ref.offset)

    def _storage(self, storage: StorageRef) -> Tensor:
        if storage.key in self._storages:
            return self._storages[storage.key]
        offset, stored = self.locations[storage.key]
        width = element_size(storage.dtype)
        nbytes = storage.numel * width
        if stored < nbytes:
            raise CheckpointError(f"{self.path} is corrupt: storage {storage.key} is shorter than its tensors")
        buffer = bytearray(stored)
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                complete = f.readinto(buffer) == stored
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot read storage {storage.key} ({short_repr(str(err))})") from None
        if not complete:
            raise CheckpointError(f"{self.path} is truncated (storage {storage.key})")
        expected = self.crc.get(storage.key)
        if expected is not None and zlib.crc32(buffer) != expected:
            raise CheckpointError(f"{self.path} is corrupt: storage {storage.key} fails its CRC check")
        flat = torch.frombuffer(buffer, dtype=torch.uint8)[:nbytes] if nbytes else torch.empty(0, dtype=torch.uint8)
        if self.big_endian and width > 1:
            flat = flat.view(-1, width).flip(1).reshape(-1)
        typed = flat.view(storage.dtype)
        self._storages[storage.key] = typed
        return typed

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
            raise CheckpointError(f"unknown persistent id {short_repr(pid)}")
        storage_type, key, _location, numel = pid[1:5]  # location ignored: everything is read to the CPU
        if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 64:
            raise CheckpointError(f"a storage key is {short_repr(key)}, not a short name")
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage {key} has an unknown type")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key} declares {short_repr(numel)} elements")
        ref = seen.setdefault(str(key), StorageRef(str(key), storage_type.dtype, numel))
        if (ref.dtype, ref.numel) != (storage_type.dtype, numel):
            raise CheckpointError(f"storage {key} is declared twice, with different types or sizes")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy views: (view_key, offset in elements, size) into the root storage
            readable = isinstance(view, tuple) and len(view) >= 2
            offset = view[1] if readable else None
            if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= numel:
                raise CheckpointError(f"storage {key} has an unreadable view {short_repr(view)} ({numel:,} elements)")
            return StorageRef(ref.key, ref.dtype, ref.numel, view_offset=view[1])
        return ref

    return load


def _zip_data_offset(f: io.BufferedIOBase, info: zipfile.ZipInfo, archive_bytes: int) -> int:
    """Where a member's bytes start; refused if they would run past the archive."""
    f.seek(info.header_offset)
    header = f.read(ZIP_LOCAL_HEADER)
    if len(header) != ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"bad zip member header for {short_repr(info.filename)}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + ZIP_LOCAL_HEADER + name_len + extra_len
    if start + info.compress_size > archive_bytes:
        raise CheckpointError(
            f"zip member {short_repr(info.filename)} claims {info.compress_size:,} bytes, "
            f"past the end of the {archive_bytes:,}-byte archive"
        )
    return start


def _check_member(info: zipfile.ZipInfo, path: Path, *, stored_only: bool) -> None:
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{path}: zip member {short_repr(info.filename)} is encrypted")
    allowed = (zipfile.ZIP_STORED,) if stored_only else (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    if info.compress_type not in allowed:
        raise CheckpointError(
            f"{path}: zip member {short_repr(info.filename)} uses compression method {info.compress_type}, "
            "which torch never writes" + ("" if stored_only else " (stored or deflate are read)")
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(f"{path}: stored zip member {short_repr(info.filename)} states two different sizes")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int) -> bytes:
    """A member's bytes, inflated in chunks and refused once past ``limit`` (whatever its header says)."""
    if info.file_size > limit:
        raise CheckpointError(f"{path}: {info.filename} states {info.file_size:,} bytes, more than {limit:,}")
    chunks, total = [], 0
    with archive.open(info) as member:
        while chunk := member.read(MiB):
            total += len(chunk)
            if total > limit:
                raise CheckpointError(f"{path}: {info.filename} inflates past {limit:,} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _read_zip(path: Path) -> TorchFile:
    archive_bytes = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except Exception as err:  # noqa: BLE001 - zipfile raises many types for a damaged directory
        raise CheckpointError(
            f"checkpoint is truncated or corrupt (its zip directory is unreadable): {path} ({short_repr(str(err))})"
        ) from None
    with archive, open(path, "rb") as f:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        for name in (pickles[0], root + "byteorder"):
            if name in members:
                _check_member(members[name], path, stored_only=False)
                _zip_data_offset(f, members[name], archive_bytes)
        big_endian = root + "byteorder" in members and (
            _read_member(archive, members[root + "byteorder"], path, 16).strip() == b"big"
        )
        try:
            data = _read_member(archive, members[pickles[0]], path, MAX_PICKLE_BYTES)
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as err:
            raise CheckpointError(f"checkpoint is truncated or corrupt: {path} ({short_repr(str(err))})") from None
        storages: dict[str, StorageRef] = {}
        tree, placeholders = restricted_load(data, _storage_loader(root, storages), str(path))
        locations, crc = {}, {}
        for key, storage in storages.items():
            info = members.get(f"{root}data/{key}")
            if info is None:
                raise CheckpointError(f"{path} is corrupt: storage {key} is missing")
            _check_member(info, path, stored_only=True)
            width = element_size(storage.dtype)
            if info.file_size % width or info.file_size < storage.numel * width:
                raise CheckpointError(
                    f"{path} is corrupt: storage {key} holds {info.file_size:,} bytes, not the "
                    f"{storage.numel:,} elements of {width} bytes its pickle declares"
                )
            locations[key] = (_zip_data_offset(f, info, archive_bytes), info.file_size)
            crc[key] = info.CRC
    return TorchFile(path, tree, placeholders, locations, crc, big_endian)


def _legacy_pickle(f: io.BufferedIOBase, load_storage, source: str) -> Any:
    """The next pickle of a legacy stream: scanned through a bounded reader, then unpickled."""
    start = f.tell()
    length = scan_pickle(BoundedReader(f, MAX_PICKLE_BYTES), source)
    f.seek(start)
    return restricted_load(f.read(length), load_storage, source)


def _read_legacy(path: Path) -> TorchFile:
    source = str(path)
    file_bytes = path.stat().st_size
    storages: dict[str, StorageRef] = {}
    load_storage = _storage_loader("", storages)
    with open(path, "rb") as f:
        magic, _ = _legacy_pickle(f, load_storage, source)
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"not a PyTorch checkpoint (a pickle, but not torch's format): {path}")
        _protocol, _ = _legacy_pickle(f, load_storage, source)
        sys_info, _ = _legacy_pickle(f, load_storage, source)
        if not isinstance(sys_info, Mapping):
            raise CheckpointError(f"not a PyTorch checkpoint (a pickle, but not torch's format): {path}")
        tree, placeholders = _legacy_pickle(f, load_storage, source)
        keys, _ = _legacy_pickle(f, load_storage, source)
        if not isinstance(keys, list) or len(keys) > len(storages):
            raise CheckpointError(f"{path}: its list of storages is unreadable")
        locations = {}
        for key in map(str, keys):
            raw = f.read(8)
            if key not in storages or len(raw) != 8:
                raise CheckpointError(f"{path} is truncated or corrupt (storage {short_repr(key)})")
            count = struct.unpack("<q", raw)[0]
            nbytes = count * element_size(storages[key].dtype)
            if not storages[key].numel <= count or f.tell() + nbytes > file_bytes:
                raise CheckpointError(
                    f"{path} is truncated or corrupt: storage {key} states {count:,} elements where "
                    f"{storages[key].numel:,} are declared and {file_bytes - f.tell():,} bytes remain"
                )
            locations[key] = (f.tell(), nbytes)
            f.seek(nbytes, os.SEEK_CUR)
    return TorchFile(path, tree, placeholders, locations)


def read_torch_file(path: str | os.PathLike) -> TorchFile:
    """Read a ``torch.save`` file (zip or legacy) without its tensor data and without running code.

    Anything malformed, whichever layer finds it (zip, pickle, legacy stream), is a ``CheckpointError``."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"checkpoint path is not a regular file (a directory, FIFO or device): {path}")
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CheckpointError(f"checkpoint file is empty: {path}")
        if head.startswith(b"PK"):
            return _read_zip(path)
        if head[:1] == b"\x80":
            return _read_legacy(path)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - the last net: a malformed file never escapes as a library's error
        raise CheckpointError(f"cannot read {path}: {type(err).__name__}: {short_repr(str(err))}") from None
    raise CheckpointError(f"not a PyTorch checkpoint (neither a zip archive nor a pickle): {path}")
