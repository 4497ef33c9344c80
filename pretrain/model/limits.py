"""What the readers accept from a file: every size a checkpoint or audio file states is held to these
bounds before anything is allocated for it, so a small file cannot ask for a large amount of memory.

The bounds are generous for real files (official checkpoints and Lightning training files are far
inside them, ``tests/test_hostile_files.py`` measures both sides) and small enough that no file of
a few kB drives a load past ``LOAD_BUDGET_BYTES`` of memory beyond the weights it actually holds.
"""

from __future__ import annotations

import os

MiB = 2**20

# --- checkpoints: the pickle ------------------------------------------------------------------
MAX_PICKLE_BYTES = 64 * MiB  # data.pkl once inflated, or one pickle of a legacy stream
MAX_PICKLE_OPS = 4_000_000  # opcodes in one pickle; a Lightning training file of a base model has ~60k
# what the objects a pickle builds take (estimated per opcode, before any is built): a deflated
# data.pkl of a few kB can hold millions of opcodes that each build an empty set
MAX_PICKLE_OBJECT_BYTES = 160 * MiB
MAX_HASH_WORK = 8_000_000  # objects visited hashing dict keys and set members (shared ones each time)
MAX_COPY_BYTES = 64 * MiB  # bytes the allowed constructors may copy (bytes, sets, arrays, ...) per pickle
MAX_TREE_NODES = 4_000_000  # objects visited when the unpickled tree is made plain (shared ones each time)
MAX_PLAIN_BYTES = 96 * MiB  # what the plain copies of its containers take (shared ones each time)
MAX_NESTING = 64  # containers inside containers; a Lightning file nests about 8 deep
MAX_TENSOR_DIMS = 8

# --- checkpoints: the encoder they describe -------------------------------------------------------
MAX_EMBED_DIM = 4096  # official base: 768
MAX_BLOCKS = 64  # official: 12
MAX_POSITIONS = 65_536  # official: 251 (1 + 250 tokens, 10 s)

# Memory a load may take beyond the encoder's own weights (read once, then converted to float32):
# the pickle, its objects and copies above, with room for the interpreter's own allocations.
LOAD_BUDGET_BYTES = 256 * MiB

# --- audio --------------------------------------------------------------------------------------
MIN_SAMPLE_RATE = 4_000  # below this a header is more likely corrupt than a recording (8 kHz: telephony)
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 64
# A compressed file (FLAC, Ogg, MP3) is taken to decode to at most this many samples per byte it
# holds, before and after resampling to 16 kHz. Music FLAC codes about 1 sample per byte, speech
# Vorbis/Opus 10-30; digital silence in FLAC's common 4,096-sample blocks about 300 per channel.
# A header that claims more (a few-kB file announcing hours) is refused before decoding.
MAX_SAMPLES_PER_BYTE = 4_096
DEFAULT_MAX_AUDIO_SECONDS = 3_600.0
# Decoded samples are in [-1, 1] for every integer format; a float file may hold raw counts (up to
# 32,768) but not 1e20, whose power spectrum overflows float32 (from about 1e17) into NaN features.
MAX_FILE_AMPLITUDE = 1e6


def max_audio_seconds() -> float:
    """The duration budget per audio file: ``$ATST_MAX_AUDIO_SECONDS`` (default one hour)."""
    text = os.environ.get("ATST_MAX_AUDIO_SECONDS")
    if text is None:
        return DEFAULT_MAX_AUDIO_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"ATST_MAX_AUDIO_SECONDS must be a positive number of seconds, got {text!r}")
    return value
