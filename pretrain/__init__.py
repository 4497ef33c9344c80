"""ATST (Audio Teacher-Student Transformer, Clip and Frame): model, front end, checkpoints and pretraining."""

from pretrain.model.audio_input import AudioInputError
from pretrain.model.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointNotFoundError,
    EncoderSpec,
    UnsafeCheckpointError,
    inspect_checkpoint,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
    write_random_checkpoint,
)
from pretrain.model.encoder import ARCHS, ATSTEncoder
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.family import FAMILIES, Family
from pretrain.model.frontend import SAMPLE_RATE, LogMelFrontEnd

__all__ = [
    "ARCHS",
    "ATSTEncoder",
    "ATSTFeatureExtractor",
    "AudioInputError",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "EncoderSpec",
    "FAMILIES",
    "Family",
    "LogMelFrontEnd",
    "SAMPLE_RATE",
    "UnsafeCheckpointError",
    "inspect_checkpoint",
    "load_encoder",
    "read_checkpoint",
    "save_checkpoint",
    "write_random_checkpoint",
]
