"""Make the Triton wrappers split every batch into one-element kernel calls: the path a batch too large for the
kernels' 32-bit offsets takes (``localmamba_kernel_runtime.launch_limits``), at sizes the interpreter can run."""
import contextlib
from typing import Iterator, List
from unittest import mock

from localmamba_kernel_runtime import launch_limits


@contextlib.contextmanager
def one_element_per_call(*modules) -> Iterator[List[int]]:
    """Within the block, ``batch_slices`` of the given wrapper modules allows one batch element per call; yields the
    number of slices of each split they asked for."""
    counts: List[int] = []

    def split(batch, item_elements, item_grid_rows=None):
        with mock.patch.object(launch_limits, "MAX_ELEMENTS", item_elements):
            slices = launch_limits.batch_slices(batch, item_elements, item_grid_rows)
        counts.append(len(slices))
        return slices

    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "batch_slices", split))
        yield counts
