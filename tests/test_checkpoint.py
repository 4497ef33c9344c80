"""Checkpoints as they really are on disk: every layout, safe reading, every error case."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import (
    ATSTEncoder,
    ATSTFeatureExtractor,
    CheckpointError,
    UnsafeCheckpointError,
    inspect_checkpoint,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
    write_random_checkpoint,
)
from pretrain.model.checkpoint import encoder_checkpoint
from pretrain.model.torch_file import read_torch_file
from tests.support.numeric import rel_err
from tests.support.official_files import encoder_weights
from tests.support.realistic_checkpoints import pickle_globals, with_numpy1_names

TOL = 1e-4


def scene_rel_err(path: Path, parity_fixture) -> float:
    model = ATSTFeatureExtractor.from_checkpoint(path)
    with torch.no_grad():
        emb = model.scene_embeddings(list(torch.from_numpy(parity_fixture["audio_3.3s"])), n_blocks=12)
    return rel_err(emb.numpy(), parity_fixture["scene12_3.3s"])


def assert_encoder_equals(path: Path, expected: dict[str, torch.Tensor]) -> None:
    encoder, _ = load_encoder(path)
    state = encoder.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key


# --- the official layouts, as real training writes them -------------------------------------------


def test_real_lightning_run_file_loads_with_parity(lightning_small_ckpt, parity_weights, parity_fixture):
    """What the issue reported refused: NumPy scalars in optimizer_states, written by a real run."""
    names = pickle_globals(lightning_small_ckpt)
    assert {"numpy.dtype", "collections.OrderedDict"} <= names
    assert names & {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar"}
    with pytest.raises(pickle.UnpicklingError):  # what torch's own safe mode makes of it
        torch.load(lightning_small_ckpt, weights_only=True)
    assert_encoder_equals(lightning_small_ckpt, parity_weights)
    _, spec = load_encoder(lightning_small_ckpt)
    assert (spec.family, spec.layout, spec.arch, spec.embed_dim, spec.depth, spec.num_heads) == (
        "clip", "lightning", "small", 384, 12, 6
    )
    assert spec.crop_seconds == 6.0
    assert scene_rel_err(lightning_small_ckpt, parity_fixture) < TOL
    whole = read_checkpoint(lightning_small_ckpt)
    group = whole["optimizer_states"][0]["param_groups"][0]
    assert isinstance(group["lr"], np.float64) and isinstance(group["weight_decay"], np.float64)
    assert isinstance(whole["hyper_parameters"], dict) and whole["hyper_parameters"]["train_len"] == 6.0
    assert whole["global_step"] == 3 and "ModelCheckpoint" in next(iter(whole["callbacks"]))


def test_numpy1_names_load(lightning_small_ckpt, parity_weights, parity_fixture, tmp_path):
    """The real official files were written under NumPy 1.x: numpy.core.multiarray.scalar."""
    old = with_numpy1_names(lightning_small_ckpt, tmp_path / "numpy1.ckpt")
    assert "numpy.core.multiarray.scalar" in pickle_globals(old)
    assert_encoder_equals(old, parity_weights)
    assert scene_rel_err(old, parity_fixture) < TOL
    lr = read_checkpoint(old)["optimizer_states"][0]["param_groups"][1]["lr"]
    assert isinstance(lr, np.float64) and lr > 0


def test_dino_style_file_loads_with_parity(dino_small_ckpt, parity_weights, parity_fixture, tmp_path):
    assert {"argparse.Namespace", "pathlib.PosixPath"} <= pickle_globals(dino_small_ckpt)
    _, spec = load_encoder(dino_small_ckpt)
    assert (spec.family, spec.layout, spec.arch, spec.crop_seconds) == ("clip", "dino", "small", 6.0)
    assert_encoder_equals(dino_small_ckpt, parity_weights)
    assert scene_rel_err(dino_small_ckpt, parity_fixture) < TOL
    old = with_numpy1_names(dino_small_ckpt, tmp_path / "dino_numpy1.ckpt")
    assert scene_rel_err(old, parity_fixture) < TOL
    args = read_checkpoint(old)["args"]
    assert isinstance(args, dict) and args["anchor_len"] == [6.0, 6.0] and str(args["output_dir"]) == "runs/atst_base"


@pytest.mark.parametrize("arch,dim,heads", [("base", 768, 12)])
def test_official_writer_dino_base(dino_base_ckpt, arch, dim, heads):
    _, spec = load_encoder(dino_base_ckpt)
    assert (spec.layout, spec.arch, spec.embed_dim, spec.depth, spec.num_heads) == ("dino", arch, dim, 12, heads)


def test_frame_lightning_layout(frame_small_ckpt):
    info = inspect_checkpoint(frame_small_ckpt)
    assert (info.spec.family, info.spec.layout, info.spec.arch, info.spec.crop_seconds) == (
        "frame", "lightning", "small", 10.0
    )
    assert info.encoder_parameters == 21_475_968  # FrameAST small (audiossl atstframe/audio_transformer.py)
    assert (info.step, info.writer) == (58500, "Lightning 1.6.0")
    assert_encoder_equals(frame_small_ckpt, encoder_weights(frame_small_ckpt))


def test_frame_finetuned_sed_layout(frame_small_ckpt, sed_ckpt):
    """ATST-SED's atst_as2M.ckpt: state_dict['encoder.encoder.*'] + head.*, no config."""
    info = inspect_checkpoint(sed_ckpt)
    assert (info.spec.family, info.spec.layout, info.spec.crop_seconds) == ("frame", "finetuned", 10.0)
    assert any("head.* (2 tensors" in c and "527 outputs" in c for c in info.contents)
    assert_encoder_equals(sed_ckpt, encoder_weights(frame_small_ckpt))


def test_clip_finetuned_layout(parity_weights, tmp_path):
    torch.save({"state_dict": {"encoder.encoder." + k: v for k, v in parity_weights.items()}}, tmp_path / "ft.ckpt")
    _, spec = load_encoder(tmp_path / "ft.ckpt")
    assert (spec.family, spec.layout) == ("clip", "finetuned")


def test_c2f_layout_loads_the_frame_student(frame_small_ckpt, parity_weights, tmp_path):
    """DistillLightningModule: model.student.* is a FrameAST, model.teacher.encoder.* a Clip AST."""
    frame = encoder_weights(frame_small_ckpt)
    state = {"model.student." + k: v for k, v in frame.items()}
    state |= {"model.teacher.encoder." + k: v for k, v in parity_weights.items()}
    state["model.teacher.head.linear.weight"] = torch.zeros(527, 768)
    state["model.linear.linear.weight"] = torch.zeros(527, 384)
    torch.save({"state_dict": state, "hyper_parameters": {"lambda_d": 1.0, "arch": "base"}}, tmp_path / "c2f.ckpt")
    info = inspect_checkpoint(tmp_path / "c2f.ckpt")
    assert (info.spec.family, info.spec.layout, info.spec.arch) == ("frame", "c2f", None)
    assert any("model.teacher.encoder.* (another ATST-Clip encoder" in c for c in info.contents)
    assert_encoder_equals(tmp_path / "c2f.ckpt", frame)
    finetuned = {"encoder.encoder.frame_encoder." + k: v for k, v in frame.items()}
    finetuned |= {"encoder.encoder.teacher_module.w": torch.zeros(3), "head.weight": torch.zeros(10, 384)}
    torch.save({"state_dict": finetuned}, tmp_path / "c2f_ft.ckpt")
    assert inspect_checkpoint(tmp_path / "c2f_ft.ckpt").spec.layout == "c2f-finetuned"
    assert_encoder_equals(tmp_path / "c2f_ft.ckpt", frame)


def test_bare_encoder_state_dict(parity_weights, tmp_path):
    torch.save(parity_weights, tmp_path / "encoder.pt")
    _, spec = load_encoder(tmp_path / "encoder.pt")
    assert (spec.family, spec.layout, spec.where) == ("clip", "state-dict", "'*' at the top level")
    assert_encoder_equals(tmp_path / "encoder.pt", parity_weights)


def test_own_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = ATSTEncoder(embed_dim=128, depth=3, num_heads=2)
    path = save_checkpoint(tmp_path / "sub" / "own.ckpt", encoder, crop_seconds=4.0, arch=None)
    loaded, spec = load_encoder(path)
    assert (spec.family, spec.layout, spec.embed_dim, spec.depth, spec.num_heads) == ("clip", "atst", 128, 3, 2)
    assert spec.crop_seconds == 4.0
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert not loaded.training
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_own_frame_layout_uses_the_frame_names(tmp_path):
    path = write_random_checkpoint(tmp_path / "f.ckpt", "tiny", family="frame")
    ckpt = read_checkpoint(path)
    assert "model.teacher.encoder.norm_frame.weight" in ckpt["state_dict"]
    assert "model.teacher.encoder.cls_token" not in ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["anchor_len"] == 10.0
    _, spec = load_encoder(path)
    assert (spec.family, spec.crop_seconds) == ("frame", 10.0)


def test_legacy_torch_format(tmp_path, parity_weights):
    """Files written by torch < 1.6 (a stream of pickles, not a zip archive)."""
    ckpt = {"state_dict": {"model.teacher.encoder." + k: v for k, v in parity_weights.items()}}
    ckpt["state_dict"]["model.student.x"] = torch.arange(10.0)[2:5]  # a view into a larger storage
    ckpt["hyper_parameters"] = {"train_len": np.float64(6.0)}
    torch.save(ckpt, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "legacy.ckpt")
    assert_encoder_equals(tmp_path / "legacy.ckpt", parity_weights)
    assert torch.equal(read_checkpoint(tmp_path / "legacy.ckpt")["state_dict"]["model.student.x"], torch.arange(2.0, 5))


def test_crop_length_from_the_file(tmp_path):
    """A Lightning-layout file recording another train_len (the official small script used 9)."""
    ckpt = encoder_checkpoint(ATSTEncoder.from_arch("tiny"))
    ckpt["hyper_parameters"] = {"train_len": np.float64(9.0), "arch": "tiny"}
    torch.save(ckpt, tmp_path / "b.ckpt")
    _, spec = load_encoder(tmp_path / "b.ckpt")
    assert (spec.layout, spec.crop_seconds, spec.num_heads) == ("lightning", 9.0, 3)


def test_loads_without_lightning_installed(lightning_small_ckpt, dino_small_ckpt, frame_small_ckpt):
    code = (
        "import sys\n"
        "for name in ('pytorch_lightning', 'lightning', 'lightning_fabric'):\n"
        "    sys.modules[name] = None  # makes any import of them fail\n"
        "from pretrain import load_encoder\n"
        f"for p in ({str(lightning_small_ckpt)!r}, {str(dino_small_ckpt)!r}, {str(frame_small_ckpt)!r}):\n"
        "    print(load_encoder(p)[1].layout, end=' ')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lightning", "dino", "lightning"]


def test_only_the_encoder_is_read(lightning_small_ckpt, tmp_path):
    """A corrupt byte in the student does not matter; one in the teacher encoder is caught by its CRC."""
    torch_file = read_torch_file(lightning_small_ckpt)
    state = torch_file.tree["state_dict"]

    def corrupt(key: str, name: str) -> Path:
        offset, _ = torch_file.locations[state[key].storage.key]
        data = bytearray(lightning_small_ckpt.read_bytes())
        data[offset + 5] ^= 0xFF
        (tmp_path / name).write_bytes(bytes(data))
        return tmp_path / name

    load_encoder(corrupt("model.student.encoder.blocks.3.mlp.fc1.weight", "student.ckpt"))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_encoder(corrupt("model.teacher.encoder.blocks.3.mlp.fc1.weight", "teacher.ckpt"))


def inspect_command(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain", "inspect", str(path)], capture_output=True, text=True)


def test_inspect_command(lightning_small_ckpt):
    out = inspect_command(lightning_small_ckpt)
    assert out.returncode == 0, out.stderr
    for expected in (
        "ATST-Clip (small), layout lightning: width 384, depth 12, heads 6, 251 positions, crop 6 s",
        "state_dict['model.teacher.encoder.*'], 21.48 M parameters",
        "step 3",
        "model.student.predictor.*",
        "optimizer_states: 1 optimizer(s), 146 parameter states",
        "callbacks: ModelCheckpoint",
    ):
        assert expected in out.stdout


# --- nothing from a file ever runs ----------------------------------------------------------------


class Calls:
    """Pickles as a call of ``function(*args)``: what a malicious file contains."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, Calls]:
    return {
        "os.system": Calls(os.system, f"touch {marker}"),
        "builtins.eval": Calls(eval, f"__import__('os').system('touch {marker}')"),
        "subprocess.Popen": Calls(subprocess.Popen, ["touch", str(marker)]),
    }


PLACES = {
    "weights": ("state_dict", "model.teacher.encoder.blocks.0.norm1.weight"),
    "hyper-parameters": ("hyper_parameters", "save_path"),
    "optimizer state": ("optimizer_states", 0, "param_groups", 1, "lr"),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_code_in_a_file_never_runs(lightning_small_ckpt, tmp_path, payload, place):
    marker = tmp_path / "pwned"
    ckpt = torch.load(lightning_small_ckpt, map_location="cpu", weights_only=False)  # our own test file
    *parents, last = PLACES[place]
    target = ckpt
    for key in parents:
        target = target[key]
    target[last] = _payloads(marker)[payload]
    torch.save(ckpt, tmp_path / "evil.ckpt")
    # protocol 2 writes the Python 2 names: posix.system, __builtin__.eval, commands.Popen
    written = {"os.system": "posix.system", "builtins.eval": "__builtin__.eval", "subprocess.Popen": "commands.Popen"}
    with pytest.raises(UnsafeCheckpointError, match=re.escape(written[payload])) as err:
        load_encoder(tmp_path / "evil.ckpt")
    assert "Nothing from the file was run" in str(err.value) and repr(last) in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        inspect_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_code_in_legacy_and_plain_pickles_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = {"teacher": Calls(os.system, f"touch {marker}")}
    torch.save(evil, tmp_path / "a.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"teacher": Calls(os.system, f"touch {marker}")}, protocol=2))
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(Calls(eval, f"__import__('os').system('touch {marker}')"), 4))
    for name in ("a.pt", "b.pkl", "c.pkl"):
        with pytest.raises(UnsafeCheckpointError, match="system|eval"):
            load_encoder(tmp_path / name)
    assert not marker.exists()


def test_command_line_and_hear_refuse_code(lightning_small_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = torch.load(lightning_small_ckpt, map_location="cpu", weights_only=False)
    ckpt["loops"]["fit_loop"]["deep"] = [{"x": (1, Calls(os.system, f"touch {marker}"))}]
    torch.save(ckpt, tmp_path / "evil.ckpt")
    out = inspect_command(tmp_path / "evil.ckpt")
    assert out.returncode == 2 and "system" in out.stderr and "['fit_loop']['deep'][0]['x'][1]" in out.stderr
    import atst_hear

    with pytest.raises(UnsafeCheckpointError):
        atst_hear.load_model(str(tmp_path / "evil.ckpt"))
    assert not marker.exists()


class HarmlessConfig:
    """A class the reader does not know, and harmless: e.g. a config object of another project."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_unknown_class_outside_the_weights_is_an_inert_placeholder(lightning_small_ckpt, parity_weights, tmp_path):
    ckpt = torch.load(lightning_small_ckpt, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["cfg"] = HarmlessConfig()
    torch.save(ckpt, tmp_path / "cfg.ckpt")
    info = inspect_checkpoint(tmp_path / "cfg.ckpt")
    name = f"{HarmlessConfig.__module__}.HarmlessConfig"  # tests.test_checkpoint.HarmlessConfig
    assert info.placeholders == [(name, "['hyper_parameters']['cfg']")]
    assert f"placeholder (unknown class, not called): {name}" in info.describe()
    assert_encoder_equals(tmp_path / "cfg.ckpt", parity_weights)


def test_unknown_class_in_the_weights_is_refused_by_name(lightning_small_ckpt, tmp_path):
    ckpt = torch.load(lightning_small_ckpt, map_location="cpu", weights_only=False)
    ckpt["state_dict"]["model.teacher.encoder.pos_embed"] = HarmlessConfig()
    torch.save(ckpt, tmp_path / "w.ckpt")
    name = re.escape(f"{HarmlessConfig.__module__}.HarmlessConfig")
    match = rf"'model\.teacher\.encoder\.pos_embed' is not a tensor but {name}$"
    with pytest.raises(CheckpointError, match=match):
        load_encoder(tmp_path / "w.ckpt")


def test_loading_leaves_torch_allowlist_unchanged(lightning_small_ckpt):
    before = list(torch.serialization.get_safe_globals())
    read_checkpoint(lightning_small_ckpt)
    assert list(torch.serialization.get_safe_globals()) == before


# --- foreign files and broken files ---------------------------------------------------------------


def _fairseq_config(**values):
    """fairseq files hold an omegaconf DictConfig: the real one where omegaconf is installed, else a
    stand-in pickled under its module path."""
    try:
        from omegaconf import DictConfig

        return DictConfig(values)
    except ImportError:
        import types

        for name in ("omegaconf", "omegaconf.dictconfig"):  # pickle imports the module path: parents too
            sys.modules.setdefault(name, types.ModuleType(name))
        module = sys.modules["omegaconf.dictconfig"]
        if not hasattr(module, "DictConfig"):
            module.DictConfig = type("DictConfig", (dict,), {"__module__": "omegaconf.dictconfig"})
        return module.DictConfig(values)


FOREIGN = {
    "wav2vec2": lambda: {
        "args": None,
        "cfg": _fairseq_config(model={"_name": "wav2vec2"}),
        "model": {
            "feature_extractor.conv_layers.0.0.weight": torch.zeros(512, 1, 10),
            "encoder.layers.0.self_attn.k_proj.weight": torch.zeros(768, 768),
            "encoder.pos_conv.0.weight_v": torch.zeros(768, 48, 128),
        },
        "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "num_updates": 400000}],
        "extra_state": {"epoch": 80},
    },
    "BEATs": lambda: {
        "cfg": {"encoder_layers": 12, "encoder_embed_dim": 768, "input_patch_size": 16},
        "model": {
            "patch_embedding.weight": torch.zeros(512, 1, 16, 16),
            "encoder.layers.0.fc1.weight": torch.zeros(3072, 768),
        },
    },
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_foreign_checkpoint_is_named_as_such(tmp_path, kind):
    torch.save(FOREIGN[kind](), tmp_path / f"{kind}.pt")
    with pytest.raises(CheckpointError, match="not an ATST checkpoint") as err:
        load_encoder(tmp_path / f"{kind}.pt")
    assert "'model'" in str(err.value) and "encoder.layers.0." in str(err.value)
    out = inspect_command(tmp_path / f"{kind}.pt")
    assert out.returncode == 2 and "not an ATST checkpoint" in out.stderr


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
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="not torch's format"):
        load_encoder(tmp_path / "p.pkl")


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
    with pytest.raises(CheckpointError, match="pickle is truncated or malformed"):
        load_encoder(tmp_path / "bad.ckpt")


def test_not_a_dict(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "z.ckpt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_encoder(tmp_path / "z.ckpt")


def test_weights_that_do_not_fit_name_the_keys(tmp_path, tiny_ckpt):
    ckpt = read_checkpoint(tiny_ckpt)
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


@pytest.mark.parametrize("value,match", [("long", "not a number"), (60.0, "outside")])
def test_bad_crop_length(tmp_path, tiny_ckpt, value, match):
    ckpt = read_checkpoint(tiny_ckpt)
    ckpt["hyper_parameters"]["train_len"] = value
    torch.save(ckpt, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match=match):
        load_encoder(tmp_path / "b.ckpt")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_shared_storages_views_and_dtypes_read_as_torch_load_gives_them(tmp_path, legacy):
    """Tied weights, slices, transposes, expand()-ed tensors and every dtype: equal to torch.load, and
    tied weights stay one storage (read once, whatever the number of views)."""
    big = torch.randn(300, 200)
    tree = {
        "tied": {"a": big, "b": big, "c": big},
        "views": {"rows": big[10:20], "column": big[:, 3], "t": big.t(), "strided": big[::2, ::3]},
        "expanded": torch.randn(1, 5).expand(100, 5),
        "dtypes": {
            "bf16": big.bfloat16(), "f16": big.half(), "f64": big.double()[:3], "i64": torch.arange(5),
            "bool": torch.ones(3, dtype=torch.bool), "c64": torch.randn(3, dtype=torch.complex64),
            "scalar": torch.tensor(3.0), "empty": torch.empty(0, 5),
        },  # fmt: skip
        "hyper_parameters": {"files": [f"clip_{i:07d}.wav" for i in range(300_000)]},  # a long file list
    }
    path = tmp_path / "state.pt"
    torch.save(tree, path, _use_new_zipfile_serialization=not legacy)
    ours, reference = read_checkpoint(path), torch.load(path, weights_only=True)

    def equal(a, b) -> bool:
        if isinstance(a, torch.Tensor):
            return a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        return a == b

    assert equal(ours, reference)
    tied = ours["tied"]
    assert tied["a"].untyped_storage().data_ptr() == tied["c"].untyped_storage().data_ptr()
