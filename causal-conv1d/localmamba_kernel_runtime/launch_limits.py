"""Where a Triton kernel call runs and what it can address: the batch slices that keep each call inside it.

Triton launches a kernel on the current CUDA device, whatever device its tensors are on: every Triton op runs with
its tensors' device made current (:func:`on_tensor_device`), as a CUDA op's device guard does, so that a model on
``cuda:1`` works in a process whose current device is ``cuda:0``.

The Triton kernels compute their offsets in 32-bit integers (cheaper in registers than 64-bit ones), and CUDA caps
a grid's second and third axes at 65,535 programs. A call whose tensors are larger runs as several calls over
slices of the batch: every op here is independent per batch element, so the slices' results are simply
concatenated (autograd flows through each call)."""
from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch

Op = TypeVar("Op", bound=Callable[..., Any])

MAX_ELEMENTS = 2 ** 31 - 1    # elements a 32-bit offset reaches: the largest tensor of one call
MAX_GRID_AXIS = 65_535        # programs along a grid's second or third axis


def batch_slices(batch: int, item_elements: int, item_grid_rows: Optional[int] = None) -> List[slice]:
    """Consecutive slices of ``range(batch)`` for separate kernel calls: each call's largest tensor holds at most
    :data:`MAX_ELEMENTS` elements, given ``item_elements`` per batch element (its largest tensor's size, or the
    span of its offsets), and, where the grid has ``item_grid_rows`` programs per batch element on a limited axis,
    at most :data:`MAX_GRID_AXIS` of them. One slice (the whole batch) when it fits.

    Raises ValueError when a single batch element is already too large."""
    per_call = MAX_ELEMENTS // max(1, item_elements)
    if item_grid_rows:
        per_call = min(per_call, MAX_GRID_AXIS // item_grid_rows)
    if per_call < 1:
        raise ValueError(f"one batch element needs {item_elements:,} elements in one tensor, more than the Triton "
                         f"kernels' 32-bit offsets reach ({MAX_ELEMENTS:,}): use the 'cuda' or 'reference' backend")
    return [slice(start, min(start + per_call, batch)) for start in range(0, max(batch, 1), per_call)]


def item_span(t: torch.Tensor) -> int:
    """Elements that one batch element of ``t`` (batch first) spans in memory, for :func:`batch_slices`: the larger
    of its batch stride and the extent of its other dimensions, so that a view of a wider tensor counts in full."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))
    return max(t.stride(0), extent)


def cuda_device_of(args: Sequence[Any]) -> Optional[torch.device]:
    """The device of the first tensor in ``args`` if it is a CUDA device, else None."""
    device = next((arg.device for arg in args if isinstance(arg, torch.Tensor)), None)
    return device if device is not None and device.type == "cuda" else None


def on_tensor_device(op: Op) -> Op:
    """``op`` (a Triton op's body, under its ``torch.library.custom_op``) run with the CUDA device of its first tensor
    argument current; unchanged for a tensor on another device (the CPU, under ``TRITON_INTERPRET=1``)."""
    @functools.wraps(op)
    def run_on_tensor_device(*args: Any, **kwargs: Any) -> Any:
        device = cuda_device_of((*args, *kwargs.values()))
        if device is None:
            return op(*args, **kwargs)
        with torch.cuda.device(device):
            return op(*args, **kwargs)
    return run_on_tensor_device  # type: ignore[return-value]
