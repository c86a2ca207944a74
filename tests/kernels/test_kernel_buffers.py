"""ckernel.new_buffer: the buffers the CPU kernels fill, big ones advised to use transparent huge pages."""
from pathlib import Path

import pytest
import torch

from localmamba_kernel_runtime import ckernel


def vm_flags_of(address: int) -> list:
    """The VmFlags of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_new_buffer_has_the_shape_dtype_and_zeros_asked_for():
    like = torch.ones(3, dtype=torch.float32)
    small = ckernel.new_buffer(like, 2, 5)
    big = ckernel.new_buffer(like, 3, ckernel.HUGE_PAGE_MIN_BYTES // 4, zero=True)
    assert small.shape == (2, 5) and small.dtype == torch.float32
    assert big.shape == (3, ckernel.HUGE_PAGE_MIN_BYTES // 4) and not big.any()


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").is_dir(),
                    reason="needs Linux with transparent huge pages (madvise, /proc/self/smaps)")
def test_a_big_buffer_is_advised_to_use_huge_pages_and_a_small_one_is_not():
    like = torch.empty(0)
    big = ckernel.new_buffer(like, 4 * ckernel.HUGE_PAGE_MIN_BYTES // 4)
    assert "hg" in vm_flags_of(big.data_ptr() + big.numel() * 2)  # the middle of the buffer
    plain = like.new_empty(4 * ckernel.HUGE_PAGE_MIN_BYTES // 4)
    assert "hg" not in vm_flags_of(plain.data_ptr() + plain.numel() * 2)
