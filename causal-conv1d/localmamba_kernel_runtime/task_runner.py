"""Run a loaded C kernel over its items in parallel tasks, and check the status it returns.

Threads: where torch runs its own ops on GNU OpenMP (Linux builds), each library is built with ``-fopenmp``
(:mod:`.ckernel`) and runs its tasks on OpenMP threads (``lm_run_tasks`` of ``task_runner.c``). The loader resolves
``libgomp.so.1`` to the copy torch already loaded, so the kernels and torch share one thread team: no thread of ours
competes with torch's workers while they spin-wait after an op (with a separate pool that contention made a whole
model a third slower on 2 cores). Elsewhere, or when the compiler lacks OpenMP, the tasks run on a Python thread pool
(ctypes releases the GIL).

A kernel that cannot allocate its work buffers returns ``LM_OUT_OF_MEMORY`` (``kernel_args.h``) having written
nothing, and its caller raises :class:`KernelOutOfMemoryError`.
"""
from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

import torch

LM_OK, LM_OUT_OF_MEMORY = 0, 1  # a kernel's status, as kernel_args.h defines it
_POOL_LOCK = threading.Lock()
_POOL: dict = {"pool": None, "size": 0}


class KernelOutOfMemoryError(MemoryError):
    """A CPU kernel could not allocate its work buffers (its outputs are not written)."""


def openmp_runner(lib: ctypes.CDLL) -> Optional[Callable[..., int]]:
    """The library's ``lm_run_tasks`` when it was built with OpenMP, else None."""
    lib.lm_openmp.restype = ctypes.c_int
    if not lib.lm_openmp():
        return None
    runner = lib.lm_run_tasks
    runner.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64, ctypes.c_int64]
    runner.restype = ctypes.c_int
    return runner


def uses_openmp(fn: Callable[..., int]) -> bool:
    """Whether a loaded kernel function runs its tasks on OpenMP threads (shared with torch)."""
    return getattr(fn, "lm_runner", None) is not None


def num_tasks(items: int, min_items_per_task: int) -> int:
    """How many parallel calls to split ``items`` into: at most ``torch.get_num_threads()``."""
    return max(1, min(torch.get_num_threads(), items // min_items_per_task))


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        # a bigger pool replaces the old one, which is not shut down: a concurrent caller may still submit to it
        # (its workers exit once it is garbage collected)
        if _POOL["size"] < workers:
            _POOL["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="localmamba-kernel")
            _POOL["size"] = workers
        return _POOL["pool"]


def check_status(fn: Callable[..., int], status: int) -> None:
    """Raise :class:`KernelOutOfMemoryError` when kernel ``fn`` returned ``LM_OUT_OF_MEMORY``."""
    if status & LM_OUT_OF_MEMORY:
        raise KernelOutOfMemoryError(f"out of memory: the CPU kernel {fn.__name__} could not allocate its work "
                                     "buffers, so it computed nothing; free memory or use smaller inputs")
    if status != LM_OK:
        raise RuntimeError(f"the CPU kernel {fn.__name__} returned the unknown status {status}")


def run_parallel(fn: Callable[..., int], args: List[ctypes.Structure], items: int) -> None:
    """Call ``fn(byref(args[i]), start_i, end_i)`` on len(args) contiguous slices of range(items), in parallel:
    on OpenMP threads when the library has them, else on a thread pool (ctypes releases the GIL during each call).
    Raises :class:`KernelOutOfMemoryError` when a task could not allocate its work buffers.
    """
    tasks = len(args)
    if tasks == 1:
        status = fn(ctypes.byref(args[0]), 0, items)
    elif uses_openmp(fn):
        pointers = (ctypes.c_void_p * tasks)(*[ctypes.addressof(a) for a in args])
        status = fn.lm_runner(ctypes.cast(fn, ctypes.c_void_p), pointers, tasks, items)
    else:
        bounds = [items * i // tasks for i in range(tasks + 1)]
        futures = [_pool(tasks - 1).submit(fn, ctypes.byref(args[i]), bounds[i], bounds[i + 1])
                   for i in range(1, tasks)]
        status = fn(ctypes.byref(args[0]), bounds[0], bounds[1])
        for future in futures:
            status |= future.result()
    check_status(fn, status)


def run_tasks(fn: Callable[..., int], make_args: Callable[[int], ctypes.Structure], items: int,
              min_items_per_task: int, tasks: Optional[int] = None) -> None:
    """Run kernel ``fn`` over ``items`` in ``num_tasks(items, min_items_per_task)`` parallel tasks; ``make_args(i)``
    gives task i its arguments (its own accumulators, where the kernel adds to some). A caller that sized per-task
    accumulators passes that ``tasks`` count (the thread count may change in between)."""
    tasks = num_tasks(items, min_items_per_task) if tasks is None else tasks
    run_parallel(fn, [make_args(i) for i in range(tasks)], items)
