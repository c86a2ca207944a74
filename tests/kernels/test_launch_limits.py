"""``launch_limits.batch_slices``: how a batch too large for one Triton kernel call is cut into calls."""
from unittest import mock

import pytest
import torch

from localmamba_kernel_runtime import launch_limits
from localmamba_kernel_runtime.launch_limits import batch_slices, item_span


def test_a_batch_that_fits_is_one_call():
    assert batch_slices(64, 4 * 3136 * 192, item_grid_rows=4) == [slice(0, 64)]


def test_largest_tensor_over_32_bit_offsets_is_split_into_calls_that_fit():
    # LocalVMamba-T's first stage at 1024 px: 4 directions x 65,536 tokens x 192 channels per image
    item = 4 * 65_536 * 192
    slices = batch_slices(64, item, item_grid_rows=4)
    assert slices == [slice(0, 42), slice(42, 64)]     # 42 = (2^31 - 1) // 50,331,648
    assert all((s.stop - s.start) * item <= 2 ** 31 - 1 for s in slices)


def test_slices_cover_the_batch_once_in_order():
    with mock.patch.object(launch_limits, "MAX_ELEMENTS", 7):
        slices = batch_slices(10, 3)                   # two elements (6 <= 7) per call
    assert slices == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10)]


def test_grid_axis_limit_caps_elements_per_call():
    assert batch_slices(40_000, 10, item_grid_rows=4) == [slice(0, 16_383), slice(16_383, 32_766),
                                                          slice(32_766, 40_000)]


def test_an_empty_batch_is_one_empty_call():
    assert batch_slices(0, 100) == [slice(0, 0)]


def test_one_element_over_the_limit_is_refused_with_the_backends_that_can_run_it():
    with pytest.raises(ValueError, match="32-bit offsets.*'cuda' or 'reference' backend"):
        batch_slices(2, 2 ** 31)


def test_item_span_counts_a_view_of_a_wider_tensor_in_full():
    x_dbl = torch.zeros(2, 7, 5, 9)                    # B as channels 3:5 of a (Bt, G, 9, L) buffer
    assert item_span(x_dbl[:, :, 3:5]) == 7 * 5 * 9    # batch stride
    assert item_span(torch.zeros(5, 2, 3).transpose(0, 1)) == 1 + 4 * 6 + 2 * 1   # batch not outermost
