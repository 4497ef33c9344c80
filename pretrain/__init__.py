"""ATST (Audio Teacher-Student Transformer): model, front end, checkpoints and pretraining."""

from pretrain.model.audio_input import AudioInputError
from pretrain.model.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
    write_random_checkpoint,
)
from pretrain.model.encoder import ARCHS, ATSTEncoder
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.frontend import SAMPLE_RATE, LogMelFrontEnd

__all__ = [
    "ARCHS",
    "ATSTEncoder",
    "ATSTFeatureExtractor",
    "AudioInputError",
    "CheckpointError",
    "LogMelFrontEnd",
    "SAMPLE_RATE",
    "UnsafeCheckpointError",
    "load_encoder",
    "read_checkpoint",
    "save_checkpoint",
    "write_random_checkpoint",
]
