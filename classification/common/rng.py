"""Random-number state: seeding, capture/restore for exact resume, and per-sample seeding for augmentation.

Augmentation draws from a generator state derived from (seed, epoch, sample index) only, so the images a run sees do
not depend on the number of loader workers, on the number of ranks, or on where a run was resumed.
Captured states hold only tensors and plain Python values, so a checkpoint that carries them loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The global generators' states of this process (python, numpy, torch CPU, and once CUDA is initialised that of
    the current GPU: the one a training process draws from, made current per rank).

    numpy's MT19937 key (624 uint32) is stored as an int64 tensor, the rest of its state as plain numbers.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def _numpy_state(saved: Any) -> tuple:
    if isinstance(saved, dict):
        key = np.asarray(saved["key"].numpy() if isinstance(saved["key"], torch.Tensor) else saved["key"])
        return saved["kind"], key.astype(np.uint32), saved["pos"], saved["has_gauss"], saved["cached_gaussian"]
    return tuple(saved)  # the tuple np.random.get_state() returns (checkpoints of earlier versions, trusted)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by `get_rng_state`, its GPU's state onto this process's current GPU: a rank resumed
    on another GPU index (the same processes in another node layout, 2x4 -> 1x8) gets its own generator back."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int, restore: bool = True) -> Iterator[None]:
    """Run a block with python/numpy/torch-CPU generators seeded by `seed`; restore the previous states after, unless
    `restore` is False (where nothing draws from them but such blocks, which reseed: a loader worker)."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
