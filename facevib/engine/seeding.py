"""Random streams derived from (seed, purpose, position) instead of carried state.

Every random draw of a training step (data order, flips, dropout/VIB noise, negative-class
sampling) is seeded from the run seed and the step (and rank where it must differ), so a
resumed run repeats an uninterrupted one exactly without replaying RNG history.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

__all__ = ["Stream", "derive_seed", "numpy_rng", "torch_generator", "seed_step"]


class Stream(enum.IntEnum):
    """Independent purposes; the value is mixed into the seed."""

    DATA_ORDER = 0
    FLIP = 1
    TORCH_GLOBAL = 2
    CLASS_SAMPLING = 3
    INIT = 4


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed from the run seed, a stream and integer keys (SeedSequence mixing)."""
    state = np.random.SeedSequence([seed, int(stream), *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def numpy_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, stream, keys)."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: Stream, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` for (seed, stream, keys); a draw made with it on its
    device never waits for a host-to-device copy."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stream, *keys))


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global generators (dropout, VIB noise) for one step on one rank."""
    torch.manual_seed(derive_seed(seed, Stream.TORCH_GLOBAL, step, rank))
