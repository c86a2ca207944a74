"""Triton kernels (selective scan, causal conv1d) against the references on CPU, under the Triton interpreter; each
kernel compiled for sm_90; and the launches' grids within CUDA's limits.

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess; the rest of the
suite is unaffected.
"""
import importlib.util

import pytest
import torch
from hopper_compile import assert_compiles_well
from interpreter_scripts import run_under_interpreter

from localmamba_kernel_runtime.launch_limits import MAX_GRID_AXIS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_triton_kernels_match_reference_under_interpreter():
    result = run_under_interpreter("triton_interpreter_checks.py", timeout=900, backend="triton")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 20, result.stdout


def test_scan_and_conv1d_kernels_compile_for_hopper():
    """The interpreter does not lower kernels: compile each one for an H100/H200 (sm_90) at the default tiles, with
    every optional input and with none (input-dependent and time-invariant B / C), without register spills and with
    every scan a loop in registers."""
    pytest.importorskip("triton.backends.nvidia", reason="triton's NVIDIA backend is not installed")
    from localmamba_conv1d import triton_conv1d as conv
    from localmamba_ssm.ops.triton import selective_scan_triton as scan
    from localmamba_ssm.ops.triton.scan_math import scan_warps

    for on, block_n in ((True, 16), (False, 16), (True, 4)):     # N = 4: fewer threads, as the launch gives it
        warps = scan_warps(scan.MAX_BLOCK_D, block_n)
        flags = dict(HAS_D=on, HAS_Z=on, HAS_BIAS=on, SOFTPLUS=on, B_VAR=on, C_VAR=on, BD=scan.MAX_BLOCK_D,
                     BN=block_n, CT=scan.CHUNK)
        assert_compiles_well(scan._scan_fwd_kernel, flags, warps)
        for atomic in (True, False):
            assert_compiles_well(scan._scan_bwd_kernel, dict(flags, HAS_DLAST=on, ATOMIC_BC=atomic), warps)
    for grad in (True, False):
        flags = dict(SIGN=-1 if grad else 1, HAS_BIAS=True, SILU=True, GRAD=grad, WIDTH=4, BD=conv.BLOCK_D,
                     BT=conv.BLOCK_T)
        assert_compiles_well(conv._conv_kernel, flags)


class _GridRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` records the grid and runs nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("shape", [(1, 1, 64 * MAX_GRID_AXIS + 1), (MAX_GRID_AXIS + 1, 1, 1)])
def test_conv1d_grids_fit_cuda_limits(shape, monkeypatch):
    """Every causal conv1d launch, forward and backward, has at most 65,535 programs on the grid's second and third
    axes (CUDA's limit; the first allows 2^31 - 1): a sequence of 4.2M steps had 65,536 time blocks on the third
    axis, which CUDA refuses to launch; a batch past 65,535 is split into calls."""
    from localmamba_conv1d import triton_conv1d as conv

    kernel = _GridRecorder()
    monkeypatch.setattr(conv, "_conv_kernel", kernel)
    x = torch.zeros(shape, requires_grad=True)
    weight = torch.zeros(1, 4, requires_grad=True)
    conv.causal_conv1d_triton(x, weight, None, "silu").sum().backward()
    assert len(kernel.grids) >= 3
    for grid in kernel.grids:
        assert grid[0] < 2 ** 31 and max(grid[1:]) <= MAX_GRID_AXIS, grid


@pytest.mark.parametrize("shape", [(1, 1, 16 * MAX_GRID_AXIS + 1, 1), (MAX_GRID_AXIS // 2 + 1, 2, 1, 1)])
def test_attention_merge_grids_fit_cuda_limits(shape, monkeypatch):
    """Every attention merge launch, forward and backward, has at most 65,535 programs on the grid's second and third
    axes: 1M tokens had 65,536 token blocks on the second axis (the backward's kernel of 8-token blocks from 524k
    tokens on); batch x directions past 65,535 are split into calls."""
    from localmamba_ssm.ops.triton import attention_merge_triton as merge

    kernel = _GridRecorder()
    for name in ("_norm_mean_kernel", "_merge_kernel", "_gate_grad_kernel", "_input_grad_kernel"):
        monkeypatch.setattr(merge, name, kernel)
    y = torch.zeros(shape, requires_grad=True)
    weights = [torch.zeros(s, requires_grad=True) for s in ((1,), (1,), (1, 1), (1,), (1, 1), (1,))]
    merge.attention_merge_triton(y, *weights).sum().backward()
    assert len(kernel.grids) >= 4
    for grid in kernel.grids:
        assert grid[0] < 2 ** 31 and max(grid[1:]) <= MAX_GRID_AXIS, grid


def test_attention_merge_kernels_get_the_eps_they_are_given(monkeypatch):
    """The LayerNorm eps reaches both kernels that normalise rows (the forward's token means and the backward's input
    gradient), not a default (triton_multi_scan_checks.py runs one case at eps 0.5: the kernels' use of it)."""
    from localmamba_ssm.ops.triton import attention_merge_triton as merge

    floats = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: floats.setdefault(self.name, [a for a in args if isinstance(a, float)])

    for name in ("_norm_mean_kernel", "_merge_kernel", "_gate_grad_kernel", "_input_grad_kernel"):
        monkeypatch.setattr(merge, name, Recorder(name))
    y = torch.zeros(1, 2, 3, 4, requires_grad=True)
    weights = [torch.zeros(s, requires_grad=True) for s in ((4,), (4,), (1, 4), (1,), (4, 1), (4,))]
    merge.attention_merge_triton(y, *weights, eps=0.25).sum().backward()
    assert floats["_norm_mean_kernel"] == [0.25] and floats["_input_grad_kernel"] == [0.25], floats
