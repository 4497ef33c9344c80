"""The official checkpoints by name: pinned by size and SHA-256, downloaded once into a cache.

Every place that takes a checkpoint path also takes one of these names (``load_encoder``,
``atst_hear.load_model``, s3prl's ``-k``, ``python -m pretrain inspect | embed | finetune``):

===================  ==============================  ===============  ================================
name                 what                            bytes            published at
===================  ==============================  ===============  ================================
``atst-clip-small``  ATST-Clip small, Lightning      411,267,681      Aliyun OSS (``atst/small.ckpt``)
``atst-clip-base``   ATST-Clip base, DINO-style      1,459,530,207    Aliyun OSS (``atst/base.ckpt``)
``atst-frame-small`` ATST-Frame small, Lightning     411,264,805      Google Drive (the audiossl README)
``atst-frame-base``  ATST-Frame base, Lightning      1,459,523,813    Google Drive (the audiossl README)
===================  ==============================  ===============  ================================

(SHA-256 and sizes as TioSisai/timbral documents the four official files.)

The cache: ``$ATST_CACHE``, else ``$XDG_CACHE_HOME/atst``, else ``~/.cache/atst``; a file is kept as
``<cache>/<name>.ckpt``. A download goes to ``<name>.ckpt.part`` (resumed with an HTTP range where
a transfer was cut), is checked against the size and SHA-256, and only then renamed into place; a
file that fails the check is deleted, never kept under the final name. A lock file serialises
processes (DDP ranks): one downloads, the others wait and then use the file. A file put into place
by hand is verified the same way on first use (``<name>.ckpt.verified`` records the check, so later
uses skip the hash). ``$ATST_REGISTRY`` names a JSON file of more entries (``{"name": {"url":
..., "sha256": ..., "size": ...}}``): a user's own checkpoints, or a test's loopback server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
ATTEMPTS = 5  # a transfer cut this many times in a row is an error
TIMEOUT_SECONDS = 60
DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


class CheckpointDownloadError(OSError):
    """A registered checkpoint that could not be fetched or failed its check; says what to do by hand."""


@dataclass(frozen=True)
class RegisteredCheckpoint:
    name: str
    url: str
    sha256: str
    size: int  # bytes
    description: str = ""

    def path_in(self, cache: Path) -> Path:
        return cache / f"{self.name}.ckpt"


OFFICIAL = {
    c.name: c
    for c in (
        RegisteredCheckpoint(
            "atst-clip-small",
            "https://checkpointstorage.oss-cn-beijing.aliyuncs.com/atst/small.ckpt",
            "fcadd6411881410d27cde47f4d540ef416aa59e0197b195cf3ee7a81885a5f4a",
            411_267_681,
            "ATST-Clip small (Lightning layout)",
        ),
        RegisteredCheckpoint(
            "atst-clip-base",
            "https://checkpointstorage.oss-cn-beijing.aliyuncs.com/atst/base.ckpt",
            "7b20168cae0d1488a0e3334f17ca1cefb9365cbaa2401c11aa98d6ffaa668496",
            1_459_530_207,
            "ATST-Clip base (DINO-style layout)",
        ),
        RegisteredCheckpoint(
            "atst-frame-small",
            DRIVE.format("1xZoOTuxV415icYONYbeFQzgrmJQf4a4B"),
            "1d85b290632dd26b8725f0ae73f53f990a898888cfc2c4794c3055a8130ff5f1",
            411_264_805,
            "ATST-Frame small (Lightning layout)",
        ),
        RegisteredCheckpoint(
            "atst-frame-base",
            DRIVE.format("1bGJSZWlAIIJ6GL5Id5dW0PTB72DL-QDQ"),
            "9f812544983add849f45ef03c4ce10184729adee082c0bdd347764f4835bb3da",
            1_459_523_813,
            "ATST-Frame base (Lightning layout)",
        ),
    )
}


def cache_dir() -> Path:
    if os.environ.get("ATST_CACHE"):
        return Path(os.environ["ATST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "atst"


def registry() -> dict[str, RegisteredCheckpoint]:
    """The official names, and those of ``$ATST_REGISTRY`` (which may replace them)."""
    entries = dict(OFFICIAL)
    extra = os.environ.get("ATST_REGISTRY")
    if extra:
        try:
            data = json.loads(Path(extra).read_text())
            for name, entry in data.items():
                sha256, size = str(entry["sha256"]).lower(), int(entry["size"])
                description = str(entry.get("description", ""))
                entries[name] = RegisteredCheckpoint(name, str(entry["url"]), sha256, size, description)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"$ATST_REGISTRY {extra}: not a registry file ({type(err).__name__}: {err})") from None
    return entries


def is_registered(name: str | os.PathLike) -> bool:
    return os.fspath(name) in registry()


def resolve_checkpoint(path_or_name: str | os.PathLike, *, progress: bool = True) -> Path:
    """A path as it is; a registered name (with no file of that name here) as its verified cached file,
    downloaded on first use."""
    path = Path(path_or_name)
    if path.exists() or not is_registered(path_or_name):
        return path
    return download(os.fspath(path_or_name), progress=progress)


def cached(name: str) -> Path | None:
    """The verified cached file of a name, or None (nothing is downloaded or hashed)."""
    entry = registry()[name]
    path = entry.path_in(cache_dir())
    return path if path.is_file() and _verified_marker_holds(path, entry) else None


def download(name: str, *, progress: bool = True) -> Path:
    """The verified file of a registered name, fetched if it is not cached yet (see the module docstring)."""
    entries = registry()
    if name not in entries:
        raise ValueError(f"unknown checkpoint name {name!r}; registered: {', '.join(sorted(entries))}")
    entry = entries[name]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = entry.path_in(cache)
    with _locked(final.with_name(final.name + ".lock")):
        if final.is_file():
            if not _verified_marker_holds(final, entry):
                _verify(final, entry, placed_by_hand=True)
                _write_marker(final, entry)
            return final
        part = final.with_name(final.name + ".part")
        _fetch(entry, part, final, progress)
        _verify(part, entry, placed_by_hand=False, final=final)
        os.replace(part, final)
        _write_marker(final, entry)
    return final


# --- internals -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # other processes wait here while one downloads
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _verified_marker_holds(path: Path, entry: RegisteredCheckpoint) -> bool:
    try:
        record = json.loads(_marker(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return record == {"sha256": entry.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_marker(path: Path, entry: RegisteredCheckpoint) -> None:
    stat = path.stat()
    record = {"sha256": entry.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _marker(path).write_text(json.dumps(record))


def _by_hand(entry: RegisteredCheckpoint, final: Path) -> str:
    return (
        f"expected {entry.size:,} bytes with sha256 {entry.sha256}; to fetch it by hand, download {entry.url} "
        f"and put it at {final} (it is verified before use)"
    )


def _verify(path: Path, entry: RegisteredCheckpoint, *, placed_by_hand: bool, final: Path | None = None) -> None:
    final = final or path
    size = path.stat().st_size
    digest = _sha256(path) if size == entry.size else None
    if digest == entry.sha256:
        return
    path.unlink()
    got = f"{size:,} bytes" + (f" with sha256 {digest}" if digest else "")
    origin = f"the file at {path}" if placed_by_hand else f"the download of {entry.name} from {entry.url}"
    raise CheckpointDownloadError(f"{origin} is not the registered file ({got}; removed); {_by_hand(entry, final)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(entry: RegisteredCheckpoint, part: Path, final: Path, progress: bool) -> None:
    """Fill ``part`` up to ``entry.size`` bytes, resuming with HTTP ranges after a cut transfer."""
    bar = _Progress(entry, enabled=progress)
    cuts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have >= entry.size:
            break
        request = urllib.request.Request(entry.url, headers={"User-Agent": "atst-plugins"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                if "text/html" in (response.headers.get("Content-Type") or ""):
                    raise CheckpointDownloadError(
                        f"cannot download {entry.name}: {entry.url} answered with a web page, not the file; "
                        + _by_hand(entry, final)
                    )
                if have and response.status != 206:  # the server ignored the range: start again
                    have = 0
                with open(part, "ab" if have else "wb") as out:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        have += len(block)
                        bar.update(have)
                        if have > entry.size:
                            break
            cuts = 0
            if (part.stat().st_size if part.exists() else 0) < entry.size:
                raise ConnectionError("the transfer ended early")
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # the range starts past the end: the part is complete or wrong
                break
            reason = f"HTTP {err.code} {err.reason}"
            raise CheckpointDownloadError(
                f"cannot download {entry.name} from {entry.url}: {reason}; " + _by_hand(entry, final)
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if isinstance(err, CheckpointDownloadError):
                raise
            cuts += 1
            moved = part.exists() and part.stat().st_size > 0
            if cuts >= ATTEMPTS or not moved:
                reason = getattr(err, "reason", err)
                raise CheckpointDownloadError(
                    f"cannot download {entry.name} from {entry.url}: {reason}; " + _by_hand(entry, final)
                ) from None
            time.sleep(min(2.0, 0.2 * cuts))
    bar.close()


class _Progress:
    """Bytes of the download on stderr: a redrawn line on a terminal, a line per tenth elsewhere."""

    def __init__(self, entry: RegisteredCheckpoint, *, enabled: bool) -> None:
        self.entry, self.enabled = entry, enabled
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_tenth = -1

    def update(self, have: int) -> None:
        if not self.enabled:
            return
        tenth = 10 * have // max(self.entry.size, 1)
        if not self.tty and tenth == self.last_tenth:
            return
        self.last_tenth = tenth
        rate = have / max(time.monotonic() - self.start, 1e-6) / 1e6
        line = f"{self.entry.name}: {have / 1e6:,.1f} / {self.entry.size / 1e6:,.1f} MB ({rate:.1f} MB/s)"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)
