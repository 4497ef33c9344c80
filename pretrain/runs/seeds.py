"""Seeds that make a run repeatable across processes, resumes and ranks."""

from __future__ import annotations

import hashlib

import torch


def mix_seed(*values: int | str) -> int:
    """A 63-bit seed from any tuple of ints and names (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def step_generator(seed: int, step: int, rank: int, device: torch.device | str) -> torch.Generator:
    """The random numbers of one training step on one rank (augmentations, masks): a function of the
    run's seed, the optimizer step and the rank alone, so a resumed run draws what it would have."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + step * 1009 + rank)
    return generator
