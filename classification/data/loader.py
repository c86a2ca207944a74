"""Samplers and data loaders that make a run reproducible across workers, ranks and resumes.

The train sampler shards one permutation per epoch (seeded by seed + epoch) over the ranks exactly as
`DistributedSampler` does, so batch t of every rank together is batch t of a single process with the global batch.
It yields `(epoch, index)` pairs, and `SeededTransformDataset` seeds the augmentation of each sample from
(seed, epoch, index): the images do not depend on how many workers or ranks decode them. An epoch resumed in its
middle starts its order further on (`set_epoch(epoch, start)`). Loader workers ignore the signals that stop a run
(SIGINT, SIGTERM, SIGUSR1, SIGHUP, which a terminal, torchrun or Slurm send to the whole process group): the main
process handles them and ends the workers itself (a worker whose batch it was receiving then prints no traceback of
the dropped connection); those still alive when the interpreter exits (a run that ends on an error holds its loaders in
the traceback) are killed then, as the SIGTERM by which multiprocessing ends them at exit would leave it waiting on
them for ever.
"""
from __future__ import annotations

import atexit
import functools
import math
import multiprocessing
import os
import signal
import sys
from contextlib import contextmanager
from types import TracebackType
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..common.rng import sample_seed, seeded
from ..common.signals import STOP_SIGNALS
from .errors import DataError


class ShardedSampler(Sampler):
    """Rank `rank`'s share of `range(size)`: every `world_size`-th item of a (shuffled, padded) order.

    Shuffled: the permutation of epoch e is `randperm(size)` from a generator seeded with `seed + e`, padded with its
    head to a multiple of `world_size` (as torch's DistributedSampler); `epoch_seeds` maps an epoch begun under
    another seed (a run resumed in its middle with a new --seed) to that seed. Not shuffled: no padding, so each
    sample is counted once when metrics are summed over ranks.
    """

    def __init__(self, size: int, world_size: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.size, self.world_size, self.rank = size, world_size, rank
        self.shuffle, self.seed, self.epoch, self.start = shuffle, seed, 0, 0
        self.epoch_seeds: dict[int, int] = {}

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Yield epoch `epoch`'s share from its position `start` on (> 0 for an epoch resumed in its middle)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        g = torch.Generator()
        g.manual_seed(self.epoch_seeds.get(self.epoch, self.seed) + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        total = math.ceil(self.size / self.world_size) * self.world_size
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self._indices()[self.start:]])

    def __len__(self) -> int:
        if not self.shuffle:
            full = len(range(self.rank, self.size, self.world_size))
        else:
            full = math.ceil(self.size / self.world_size)
        return max(full - self.start, 0)


class SeededTransformDataset(Dataset):
    """Wraps a (PIL image, label) dataset; item `(epoch, index)` is transformed under a seed of (seed, epoch, index),
    where `epoch_seeds` replaces `seed` for an epoch begun under another one (as `ShardedSampler`'s)."""

    def __init__(self, base: Dataset, transform: Callable, seed: int):
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch_seeds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, label = self.base[index]
        # a loader worker draws from its generators only here, each time reseeded: saving and restoring their states
        # (0.2 ms a sample) matters only in the main process (-j 0), whose states a resumed run restores
        in_worker = torch.utils.data.get_worker_info() is not None
        with seeded(sample_seed(self.epoch_seeds.get(epoch, self.seed), epoch, index), restore=not in_worker):
            return self.transform(image), label


def _quiet_when_main_process_left(exc_type: type[BaseException], exc: BaseException, tb: Optional[TracebackType],
                                  report: Callable = sys.__excepthook__) -> None:
    """A worker's `sys.excepthook`, through which multiprocessing's resource-sharer thread reports its errors: a
    connection the main process closed or dropped mid-transfer (Ctrl-C while it fetched a batch) is no error of the
    worker, so it prints nothing; any other error is reported as before."""
    if not issubclass(exc_type, (ConnectionResetError, BrokenPipeError, EOFError)):
        report(exc_type, exc, tb)


def _init_worker(worker_id: int) -> None:
    """Leave the stop signals to the main process, and keep quiet when it stops while a batch is being handed over."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.excepthook = functools.partial(_quiet_when_main_process_left, report=sys.excepthook)


def _kill_workers_left_at_exit() -> None:
    """Kill the daemonic child processes (the loader workers) still alive at exit: multiprocessing's own exit
    handler, which runs after this one, would SIGTERM them, which they ignore, and wait for them for ever."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


def lost_worker(err: BaseException) -> str | None:
    """One line for torch's error of a loader worker process that died (killed: the out-of-memory killer's usual
    victim); None for any other error."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not text.startswith("DataLoader worker (pid"):
        return None
    return (f"{text.splitlines()[0].rstrip('. ')}: a data loader process died, most often killed by the system's "
            f"out-of-memory killer (`dmesg` says); fewer -j or a smaller -b take less memory")


@contextmanager
def lost_worker_as_data_error(saved: Optional[Callable[[], str]] = None) -> Iterator[None]:
    """Raise torch's error of a dead loader worker within the block as a `DataError` of `lost_worker`'s line, followed
    by `; ` and what `saved()` says (called only then) when given; any other error passes unchanged."""
    try:
        yield
    except RuntimeError as err:
        why = lost_worker(err)
        if why is None:
            raise
        raise DataError(why if saved is None else f"{why}; {saved()}") from None


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(requested: int) -> int:
    """The loader processes to start for `requested` (-j): at most one per usable CPU, as more only contend for
    them (the images do not depend on the count, see the module's docstring)."""
    return min(requested, usable_cpus())


def build_loader(dataset: Dataset, transform: Callable, batch_size: int, workers: int, training: bool,
                 world_size: int, rank: int, seed: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `dataset` sharded for this rank; training loaders shuffle and drop the last partial batch.
    It starts `loader_workers(workers)` processes; `pin_memory` (for a CUDA device only: pinning goes through CUDA)
    pins its batches."""
    workers = loader_workers(workers)
    if workers > 0:
        atexit.unregister(_kill_workers_left_at_exit)  # registered once, and after multiprocessing's: run before it
        atexit.register(_kill_workers_left_at_exit)
    sampler = ShardedSampler(len(dataset), world_size, rank, shuffle=training, seed=seed)
    generator = torch.Generator()  # keeps DataLoader seeding away from the global torch generator
    generator.manual_seed(seed)
    return DataLoader(
        SeededTransformDataset(dataset, transform, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=training,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_init_worker,
        generator=generator,
    )
