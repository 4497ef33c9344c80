"""What an exported task is (``task.json`` beside its shards) and how xares scores it; shared by the
exporter (``atst_xares.task``) and the task modules it writes (``atst_xares.task_config``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPEC_FILE = "task.json"
# xares's own defaults (xares.task.TaskConfig): a linear layer (LayerNorm + Linear) for 10 epochs
XARES_EPOCHS = 10
XARES_LR = 1e-3


@dataclass
class TaskSpec:
    """An xares task made from a HEAR 2021 task folder.

    ``kind``: "clip" (HEAR scene tasks) or "frame" (HEAR event tasks); ``metric``: xares's name
    ("accuracy" multiclass, "mAP" multilabel, "segmentf1_macro" events: F1 over 1 s segments);
    ``splits``: "trainvaltest" or the fold names of a k-fold task; ``test_clips``: xares's weight
    of the task in its averages.
    """

    name: str
    kind: str
    labels: list[str]
    multilabel: bool
    metric: str
    splits: list[str]
    test_clips: int
    source: str
    epochs: int = XARES_EPOCHS
    learning_rate: float = XARES_LR
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kfold(self) -> bool:
        return self.splits != ["trainvaltest"]

    def write(self, folder: Path) -> Path:
        path = folder / SPEC_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, folder: Path) -> TaskSpec:
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: write the task with python -m atst_xares.task")
        return cls(**json.loads(path.read_text()))


def audio_tar_pattern(split: str, *, kfold: bool) -> str:
    """The shard names xares globs for a split (``TaskConfig.update_tar_name_of_split``); its
    ``write_audio_tar`` puts the shard number where the ``*`` is."""
    return f"wds-audio-fold-{split}-*.tar" if kfold else f"{split}-*.tar"
