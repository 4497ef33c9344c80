"""hear-eval-kit's real embeddings and predictions runners on generated HEAR tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.finetune.generated_tasks import make_event_task, make_scene_task

ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")

pytestmark = pytest.mark.heareval


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env={**ENV, **env})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heareval")
    make_scene_task(root / "tasks")
    make_event_task(root / "tasks")
    return root


# scene embedding size of the tiny encoders (4 blocks, D = 192): Clip has CLS and mean per block, Frame the mean
SCENE_SIZE = {"clip": 2 * 4 * 192, "frame": 4 * 192}


@pytest.fixture(scope="module", params=["clip", "frame"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def embeddings(workdir, family, request) -> Path:
    """The unmodified heareval embeddings runner over both tasks, with a tiny checkpoint of the family."""
    ckpt = request.getfixturevalue("tiny_ckpt" if family == "clip" else "tiny_frame_ckpt")
    run(
        [
            "-m",
            "heareval.embeddings.runner",
            "atst_hear",
            "--model",
            str(ckpt),
            "--tasks-dir",
            "tasks",
            "--embeddings-dir",
            f"embeddings_{family}",
        ],
        workdir,
    )
    return workdir / f"embeddings_{family}" / "atst_hear"


def test_scene_embeddings_written(embeddings, family):
    task = embeddings / "synth_scene"
    size = SCENE_SIZE[family]
    for split, n in (("train", 24), ("valid", 12), ("test", 12)):
        assert json.loads((task / f"{split}.embedding-dimensions.json").read_text()) == [n, size]
        # heareval writes a raw float32 memmap beside its dimensions file
        emb = np.memmap(task / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=(n, size))
        assert emb.shape == (n, size) and np.isfinite(emb).all()
    assert (task / ".done.embeddings").exists()


def test_event_embeddings_written_on_40ms_grid(embeddings):
    task = embeddings / "synth_event"
    timestamps = json.loads((task / "test.filename-timestamps.json").read_text())
    times = np.array([t for _, t in timestamps]).reshape(4, -1)  # 4 test clips of 4 s
    assert times.shape[1] == (64000 // 160 + 1) // 4
    assert np.allclose(np.diff(times, axis=1), 40.0) and times.max() <= 4000
    assert json.loads((task / "test.embedding-dimensions.json").read_text())[1] == 4 * 192


def test_scene_predictions_above_chance(embeddings, workdir):
    """The unmodified predictions runner, selecting on validation among four grid points: four
    classes, chance is 0.25. On torch >= 2.6 it needs
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to reload its own checkpoints (what docs/hear.md tells users,
    and what atst_hear.run_heareval sets)."""
    run(
        [
            "-m",
            "heareval.predictions.runner",
            str(embeddings / "synth_scene"),
            "--grid",
            "faster",
            "--grid-points",
            "4",  # the first of heareval's faster grid (lr 1e-4, 10 steps) barely trains
        ],
        workdir,
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
    )
    scores = json.loads((embeddings / "synth_scene" / "test.predicted-scores.json").read_text())
    assert scores["test"]["test_top1_acc"] > 0.5


def test_event_predictions_through_launcher(embeddings, workdir):
    """Event task scoring for early stopping (heareval's default): needs the launcher's fix."""
    run(
        [
            "-m",
            "atst_hear.run_heareval",
            "predictions",
            str(embeddings / "synth_event"),
            "--grid",
            "faster",
            "--grid-points",
            "1",
        ],
        workdir,
    )
    scores = json.loads((embeddings / "synth_event" / "test.predicted-scores.json").read_text())["test"]
    assert {"test_event_onset_200ms_fms", "test_segment_1s_er"} <= set(scores)
    assert 0.0 <= scores["test_event_onset_200ms_fms"] <= 1.0
    assert scores["test_event_onset_200ms_fms"] > 0.3


def test_model_options_through_launcher(workdir, tiny_ckpt):
    """--model-options reach load_model; heareval names the output folder after them."""
    run(
        [
            "-m",
            "atst_hear.run_heareval",
            "embeddings",
            "atst_hear",
            "--model",
            str(tiny_ckpt),
            "--tasks-dir",
            "tasks",
            "--task",
            "synth_scene",
            "--embeddings-dir",
            "emb_opts",
            "--model-options",
            '{"n_blocks": 2}',
        ],
        workdir,
    )
    dims = json.loads(
        (workdir / "emb_opts" / "atst_hear-n-blocks=2" / "synth_scene" / "test.embedding-dimensions.json").read_text()
    )
    assert dims == [12, 2 * 2 * 192]


def test_launcher_usage_error():
    result = subprocess.run([sys.executable, "-m", "atst_hear.run_heareval", "train"], capture_output=True, text=True)
    assert result.returncode != 0 and "embeddings,predictions" in result.stderr
