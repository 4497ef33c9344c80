"""Checkpoint layouts, safe loading and every error case, on real files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from pretrain import (
    ATSTEncoder,
    CheckpointError,
    UnsafeCheckpointError,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
    write_random_checkpoint,
)


def test_lightning_layout(lightning_small_ckpt):
    encoder, spec = load_encoder(lightning_small_ckpt)
    assert (spec.layout, spec.arch, spec.embed_dim, spec.depth, spec.num_heads) == ("lightning", "small", 384, 12, 6)
    assert spec.train_len == 6.0
    raw = torch.load(lightning_small_ckpt, weights_only=False)["state_dict"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, raw["model.teacher.encoder." + key]), key


@pytest.mark.parametrize("arch,dim,heads", [("small", 384, 6), ("base", 768, 12)])
def test_dino_layout(tmp_path, arch, dim, heads, request):
    path = request.getfixturevalue(f"dino_{arch}_ckpt")
    encoder, spec = load_encoder(path)
    assert (spec.layout, spec.arch, spec.embed_dim, spec.depth, spec.num_heads) == ("dino", arch, dim, 12, heads)
    assert spec.train_len == 6.0  # args.anchor_len[0]
    teacher = torch.load(path, weights_only=False)["teacher"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, teacher["module.backbone." + key]), key


def test_own_layout_round_trip_and_train_len(tmp_path):
    torch.manual_seed(0)
    encoder = ATSTEncoder(embed_dim=128, depth=3, num_heads=2)
    path = save_checkpoint(tmp_path / "sub" / "own.ckpt", encoder, train_len=4.0, arch=None)
    loaded, spec = load_encoder(path)
    assert (spec.layout, spec.embed_dim, spec.depth, spec.num_heads, spec.train_len) == ("atst", 128, 3, 2, 4.0)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert not loaded.training
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_train_len_from_lightning_hparams(tmp_path):
    """A Lightning-layout file that records another train_len (the official small script used 9)."""
    path = write_random_checkpoint(tmp_path / "a.ckpt", "tiny")
    ckpt = torch.load(path, weights_only=True)
    hparams = ckpt["hyper_parameters"]
    del hparams["format"]
    hparams["train_len"] = 9.0
    torch.save(ckpt, tmp_path / "b.ckpt")
    _, spec = load_encoder(tmp_path / "b.ckpt")
    assert (spec.layout, spec.train_len, spec.num_heads) == ("lightning", 9.0, 3)


def test_loads_without_lightning_installed(lightning_small_ckpt, dino_small_ckpt):
    """Lightning's AttributeDict is referenced by the official files; it must not be imported."""
    code = (
        "import sys\n"
        "for name in ('pytorch_lightning', 'lightning', 'lightning_fabric'):\n"
        "    sys.modules[name] = None  # makes any import of them fail\n"
        "from pretrain import load_encoder\n"
        f"print(load_encoder({str(lightning_small_ckpt)!r})[1].layout,\n"
        f"      load_encoder({str(dino_small_ckpt)!r})[1].layout)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lightning", "dino"]


def test_loading_leaves_torch_allowlist_unchanged(lightning_small_ckpt):
    before = list(torch.serialization.get_safe_globals())
    read_checkpoint(lightning_small_ckpt)
    assert list(torch.serialization.get_safe_globals()) == before


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_torch_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        load_encoder(path)
    assert not marker.exists()


def test_malicious_plain_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"teacher": _RunsCommand(f"touch {marker}")}, protocol=2))
    with pytest.raises(CheckpointError, match="system"):
        load_encoder(path)
    assert not marker.exists()


class PlainObject:
    """Harmless, but not on the allowlist: the refusal must name it."""


def test_unknown_class_is_named(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"x": PlainObject()}}, path)
    with pytest.raises(UnsafeCheckpointError, match="test_checkpoint.PlainObject"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_encoder(tmp_path / "nope.ckpt")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_encoder(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_encoder(tmp_path / "e.ckpt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "t.ckpt").write_text("model: atst\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_encoder(tmp_path / "t.ckpt")


def test_truncated_file(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_encoder(tmp_path / "cut.ckpt")


def test_corrupt_member(tmp_path, tiny_ckpt):
    """A zip whose pickle is damaged: still a clear CheckpointError."""
    src, dst = zipfile.ZipFile(tiny_ckpt), zipfile.ZipFile(tmp_path / "bad.ckpt", "w")
    for item in src.infolist():
        data = src.read(item)
        dst.writestr(item, data[:20] if item.filename.endswith("data.pkl") else data)
    dst.close()
    with pytest.raises(CheckpointError):
        load_encoder(tmp_path / "bad.ckpt")


def test_unknown_layout(tmp_path):
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "u.ckpt")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout.*'model'"):
        load_encoder(tmp_path / "u.ckpt")


def test_not_a_dict(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "z.ckpt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_encoder(tmp_path / "z.ckpt")


def test_weights_that_do_not_fit_name_the_keys(tmp_path, tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    sd = ckpt["state_dict"]
    del sd["model.teacher.encoder.blocks.1.mlp.fc1.bias"]
    sd["model.teacher.encoder.blocks.0.attn.qkv.bias"] = torch.zeros(3)
    sd["model.teacher.encoder.norm.weight"] = torch.ones(7)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "bad.ckpt")
    message = str(err.value)
    assert "blocks.1.mlp.fc1.bias" in message
    assert "blocks.0.attn.qkv.bias" in message
    assert "norm.weight (7,)" in message


def test_bad_train_len(tmp_path, tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["train_len"] = "long"
    torch.save(ckpt, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match="train_len"):
        load_encoder(tmp_path / "b.ckpt")
