"""Checkpoints by name against a real HTTP server on the loopback address: the registry's entries are
replaced through ``$ATST_REGISTRY`` (a user registry file) and the cache moved with ``$ATST_CACHE``."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import atst_hear
from pretrain import load_encoder, write_random_checkpoint
from pretrain.model.registry import OFFICIAL, CheckpointDownloadError, cached, download, registry


class Server:
    """Serves ``files`` with HTTP ranges; ``cut_after`` bytes ends the first full response early;
    ``slow`` seconds per 64 KiB keep a transfer going while another process asks."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut_after, self.slow = files, None, 0.0
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                owner.requests.append((name, self.headers.get("Range")))
                if name not in owner.files:
                    self.send_error(404, "Not Found")
                    return
                data, start = owner.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if owner.cut_after is not None and start == 0:
                    body, owner.cut_after = body[: owner.cut_after], None  # the connection drops mid-file
                for i in range(0, len(body), 1 << 16):
                    self.wfile.write(body[i : i + (1 << 16)])
                    if owner.slow:
                        threading.Event().wait(owner.slow)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def full_gets(self, name: str) -> int:
        return sum(1 for n, r in self.requests if n == name and r is None)


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return write_random_checkpoint(tmp_path_factory.mktemp("reg") / "tiny.ckpt", "tiny", family="frame").read_bytes()


@pytest.fixture
def server(tiny_bytes):
    s = Server({"tiny.ckpt": tiny_bytes})
    yield s
    s.httpd.shutdown()


@pytest.fixture
def hub(tmp_path, monkeypatch, server, tiny_bytes):
    """A registry file naming the loopback server's file, and an empty cache."""
    entries = {
        "test-tiny": {"url": f"{server.url}/tiny.ckpt", "sha256": hashlib.sha256(tiny_bytes).hexdigest(),
                      "size": len(tiny_bytes)},
        "test-wrong-hash": {"url": f"{server.url}/tiny.ckpt", "sha256": "0" * 64, "size": len(tiny_bytes)},
        "test-missing": {"url": f"{server.url}/gone.ckpt", "sha256": "1" * 64, "size": 10},
    }
    (tmp_path / "registry.json").write_text(json.dumps(entries))
    monkeypatch.setenv("ATST_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("ATST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_four_official_files_are_pinned():
    assert sorted(OFFICIAL) == ["atst-clip-base", "atst-clip-small", "atst-frame-base", "atst-frame-small"]
    assert OFFICIAL["atst-frame-base"].size == 1_459_523_813
    assert OFFICIAL["atst-clip-small"].sha256.startswith("fcadd641")
    assert all(len(e.sha256) == 64 for e in OFFICIAL.values())


def test_first_use_downloads_and_verifies_then_the_cache_serves(hub, server):
    assert cached("test-tiny") is None
    encoder, spec = load_encoder("test-tiny")  # a name where a path goes
    assert spec.family == "frame" and server.full_gets("tiny.ckpt") == 1
    assert (hub / "test-tiny.ckpt").is_file() and not (hub / "test-tiny.ckpt.part").exists()
    model = atst_hear.load_model("test-tiny")
    assert atst_hear.get_scene_embeddings(torch.zeros(1, 16000), model).shape == (1, 768)
    assert server.full_gets("tiny.ckpt") == 1 and cached("test-tiny") == hub / "test-tiny.ckpt"


def test_a_wrong_hash_is_refused_and_nothing_is_kept(hub):
    with pytest.raises(CheckpointDownloadError, match="is not the registered file") as err:
        download("test-wrong-hash", progress=False)
    assert "put it at" in str(err.value) and "0" * 64 in str(err.value)
    assert sorted(p.name for p in hub.iterdir()) == ["test-wrong-hash.ckpt.lock"]


def test_a_cut_transfer_is_resumed_with_a_range(hub, server, tiny_bytes):
    server.cut_after = len(tiny_bytes) // 3
    path = download("test-tiny", progress=False)
    assert path.read_bytes() == tiny_bytes
    assert server.requests == [("tiny.ckpt", None), ("tiny.ckpt", f"bytes={len(tiny_bytes) // 3}-")]


def test_404_and_a_refused_connection_are_clear_errors(hub, tmp_path, monkeypatch, tiny_bytes):
    with pytest.raises(CheckpointDownloadError, match="HTTP 404") as err:
        download("test-missing", progress=False)
    message = str(err.value)
    assert "/gone.ckpt" in message and "10 bytes" in message and "1" * 64 in message
    assert str(hub / "test-missing.ckpt") in message
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entries = {"test-offline": {"url": f"http://127.0.0.1:{port}/x.ckpt", "sha256": "2" * 64, "size": 5}}
    (tmp_path / "offline.json").write_text(json.dumps(entries))
    monkeypatch.setenv("ATST_REGISTRY", str(tmp_path / "offline.json"))
    with pytest.raises(CheckpointDownloadError, match="refused"):
        download("test-offline", progress=False)


def test_a_file_placed_by_hand_is_verified(hub, server, tiny_bytes):
    hub.mkdir(parents=True)
    (hub / "test-tiny.ckpt").write_bytes(tiny_bytes[:-1] + b"x")  # damaged
    with pytest.raises(CheckpointDownloadError, match="the file at"):
        download("test-tiny", progress=False)
    assert not (hub / "test-tiny.ckpt").exists()
    (hub / "test-tiny.ckpt").write_bytes(tiny_bytes)
    assert download("test-tiny", progress=False) == hub / "test-tiny.ckpt"
    assert server.requests == []  # neither needed the network


def test_two_processes_at_once_download_once(hub, server):
    server.slow = 0.01
    code = "from pretrain.model.registry import download; print(download('test-tiny', progress=False))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs == [str(hub / "test-tiny.ckpt")] * 2 and server.full_gets("tiny.ckpt") == 1


def test_command_line_lists_downloads_and_takes_names(hub, server):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True)

    listing = cli("models")
    assert listing.returncode == 0 and "atst-frame-base" in listing.stdout and "1,459.5 MB" in listing.stdout
    assert "test-tiny" in listing.stdout and "not downloaded" in listing.stdout
    assert cli("download", "test-tiny").returncode == 0
    assert "cached at" in cli("models").stdout
    inspected = cli("inspect", "test-tiny")
    assert inspected.returncode == 0 and "frame" in inspected.stdout.lower()
    failed = cli("download", "test-missing")
    assert failed.returncode == 2 and "HTTP 404" in failed.stderr and "Traceback" not in failed.stderr
    assert server.full_gets("tiny.ckpt") == 1


def test_unknown_names_are_not_guessed(hub):
    assert "test-tiny" in registry()
    with pytest.raises(FileNotFoundError, match="registered names: atst-clip-base"):
        load_encoder("atst-frame-huge")


def test_harness_entry_points_take_names(hub, server, monkeypatch):
    from atst_upstream.expert import UpstreamExpert

    expert = UpstreamExpert("test-tiny")  # s3prl's -k
    assert len(expert([torch.zeros(16000)])["hidden_states"]) == 4
    monkeypatch.setenv("ATST_CHECKPOINT", "test-tiny")
    assert atst_hear.load_model().family == "frame"
    validator = Path(sys.executable).parent / "hear-validator"
    command = [str(validator), "atst_hear", "-m", "test-tiny", "-d", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "Looks good" in result.stdout, result.stdout[-1500:] + result.stderr[-1500:]
    assert server.full_gets("tiny.ckpt") == 1
