"""What every pretraining recipe declares (``Recipe``), and the pieces all of them share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from pretrain.model.encoder import ATSTEncoder
from pretrain.model.frontend import LogMelFrontEnd

# A recipe's functions take the run's ``pretrain.training.config.PretrainConfig`` (not imported here:
# the configuration imports the recipes for its presets and choices).
Config = Any

# The encoder outputs that feed the projector: (encoder, mels, token mask, student side?) -> rows
Outputs = Callable[[ATSTEncoder, Tensor, "Tensor | None", bool], Tensor]

# Runs on two CPU cores in minutes: this project's, for tests, demos and smoke runs.
CPU_SIZED: dict[str, Any] = {
    "arch": "tiny",
    "batch_size": 16,
    "base_lr": 4e-3,
    "warmup_steps": 10,
    "max_steps": 120,
    "ema": 0.99,
    "mixup_memory": 256,
    "drop_path": 0.0,
    "devices": "1",
    "accelerator": "cpu",
    "num_workers": 1,
    "checkpoint_every": 40,
    "log_every": 5,
}


@dataclass(frozen=True)
class Recipe:
    """A family's teacher-student pretraining, beyond the model (``pretrain.model.family``).

    ``views(config)`` is a module turning ``(B, n_crops, 64, T)`` crop mels and a generator into
    ``(view_a, view_b, token_mask or None)``; ``outputs`` picks the encoder rows the loss compares;
    ``official_hparams(config)`` gives the official scripts' names for the settings, so the
    official ``load_from_checkpoint`` reads this package's files; ``presets`` are the family's
    starting values (the official ones listed in ``official_presets``, the CPU-sized one
    ``cpu_preset``); ``check`` refuses settings the family cannot run.
    """

    family: str
    n_crops: int
    views: Callable[[Config], nn.Module]
    outputs: Outputs
    official_hparams: Callable[[Config], dict[str, Any]]
    presets: Mapping[str, Mapping[str, Any]]
    default_preset: str
    official_presets: tuple[str, ...]
    cpu_preset: str  # this project's minutes-on-a-CPU preset (tests, the demo)
    uses_mask_embed: bool  # the student's input has masked tokens replaced by mask_embed
    check: Callable[[Config], None] = lambda config: None


def crop_mels(frontend: LogMelFrontEnd, wavs: Tensor) -> Tensor:
    """``(B, n_crops, n)`` crops -> ``(B, n_crops, 64, T)`` scaled log-mels (per-crop ``top_db`` floor)."""
    batch, n_crops = wavs.shape[:2]
    return frontend.equal_length(wavs.flatten(0, 1).float()).unflatten(0, (batch, n_crops))
