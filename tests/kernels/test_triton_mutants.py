"""What the interpreter checks of the Triton kernels could not see (found by mutating the kernels one line at a time),
with the kernels replaced by recorders (nothing runs, no interpreter needed):

- the choice between the atomic and the per-program backward reductions. The interpreter runs the programs one
  after another, so both give the reference's values and only the launches tell them apart: under
  ``torch.use_deterministic_algorithms(True)`` every backward kernel that sums several programs' contributions must
  be launched with its atomic flag off (atomics add in a different order on every GPU run), and with it on otherwise
  (the per-program buffers cost memory);
- the batch split that keeps the scans' grids within CUDA's 65,535 programs on the batch axis (the interpreter has
  no such limit; the conv's and the attention merge's grids are checked in test_triton_interpreter.py).
"""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


class _FlagRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` records the value of its ``flag`` keyword and runs
    nothing."""

    def __init__(self, name, flag, seen):
        self.name, self.flag, self.seen = name, flag, seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.flag is not None:
                self.seen.append((self.name, kwargs[self.flag]))
        return launch


class _GridRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` appends ``grid`` to ``grids`` and runs nothing."""

    def __init__(self, grids):
        self.grids = grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def _record_flags(monkeypatch, module, kernels, run, deterministic):
    """The (kernel, flag value) of every launch of ``kernels`` ({name: flag keyword or None}) while ``run()`` runs."""
    seen = []
    for name, flag in kernels.items():
        monkeypatch.setattr(module, name, _FlagRecorder(name, flag, seen))
    torch.use_deterministic_algorithms(deterministic)
    try:
        run()
    finally:
        torch.use_deterministic_algorithms(False)
    return seen


@pytest.mark.parametrize("deterministic", [False, True])
def test_selective_scan_backward_is_atomic_unless_deterministic(monkeypatch, deterministic):
    from localmamba_ssm.ops.triton import selective_scan_triton as scan

    def run():
        u, delta = (torch.randn(2, 16, 5).requires_grad_() for _ in range(2))
        A = (-torch.rand(16, 4)).requires_grad_()
        B, C = (torch.randn(2, 2, 4, 5).requires_grad_() for _ in range(2))
        scan.selective_scan_triton(u, delta, A, B, C, delta_softplus=True).sum().backward()

    seen = _record_flags(monkeypatch, scan, {"_scan_fwd_kernel": None, "_scan_bwd_kernel": "ATOMIC_BC"}, run,
                         deterministic)
    assert seen == [("_scan_bwd_kernel", not deterministic)]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("conv", [True, False])
def test_multi_scan_backward_is_atomic_unless_deterministic(monkeypatch, conv, deterministic):
    from localmamba_ssm.ops.triton import multi_scan_triton as scan

    def run():
        inner, state, rank, num_dirs = 4, 2, 1, 2
        index = torch.tensor([[0, 1, 2], [2, 1, 0]])
        tokens = torch.randn(1, 3, 2 * inner, requires_grad=True)
        params = [torch.randn(shape, requires_grad=True) for shape in
                  ((num_dirs, rank + 2 * state, inner), (num_dirs, inner, rank), (num_dirs, inner),
                   (num_dirs, inner, state), (num_dirs, inner))]
        conv_weight = torch.randn(num_dirs, inner, 1, 3, requires_grad=True) if conv else None
        scan.multi_scan_inner_triton(tokens, index, *params, conv_weight=conv_weight, gate=True).sum().backward()

    kernels = {"_conv_fwd_kernel": None, "_conv_bwd_pre_kernel": None, "_conv_bwd_x_kernel": "ATOMIC",
               "_scan_fwd_kernel": None, "_scan_bwd_kernel": "ATOMIC"}
    seen = _record_flags(monkeypatch, scan, kernels, run, deterministic)
    expected = [("_scan_bwd_kernel", not deterministic)] + ([("_conv_bwd_x_kernel", not deterministic)] if conv else [])
    assert seen == expected


def test_multi_scan_grids_fit_cuda_limits(monkeypatch):
    """Every multi_scan_inner launch, forward and backward, with a conv and token-major, has at most 65,535 programs
    on the grid's second and third axes (CUDA's limit; the first allows 2^31 - 1): the scan kernels' second axis is
    batch x directions, so a batch of 32,768 with 2 directions is split into calls. Nothing else pinned it: the
    interpreter checks split the batch by hand, one element per call."""
    from localmamba_kernel_runtime.launch_limits import MAX_GRID_AXIS
    from localmamba_ssm.ops.triton import multi_scan_triton as scan

    grids = []
    for name in ("_conv_fwd_kernel", "_conv_bwd_pre_kernel", "_conv_bwd_x_kernel", "_scan_fwd_kernel",
                 "_scan_bwd_kernel"):
        monkeypatch.setattr(scan, name, _GridRecorder(grids))
    index = torch.tensor([[0], [0]])
    tokens = torch.zeros(MAX_GRID_AXIS // 2 + 1, 1, 2, requires_grad=True)
    params = [torch.zeros(shape, requires_grad=True) for shape in ((2, 3, 1), (2, 1, 1), (2, 1), (2, 1, 1), (2, 1))]
    for conv_weight in (torch.zeros(2, 1, 1, 2, requires_grad=True), None):
        scan.multi_scan_inner_triton(tokens, index, *params, conv_weight=conv_weight, gate=True).sum().backward()
    assert len(grids) >= 2 * 4
    for grid in grids:
        assert grid[0] < 2 ** 31 and max(grid[1:]) <= MAX_GRID_AXIS, grid


def test_selective_scan_grids_fit_cuda_limits(monkeypatch):
    """Every selective scan launch, forward and backward, has at most 65,535 programs on the grid's second axis, the
    batch: a batch of 65,536 is split into calls."""
    from localmamba_kernel_runtime.launch_limits import MAX_GRID_AXIS
    from localmamba_ssm.ops.triton import selective_scan_triton as scan

    grids = []
    for name in ("_scan_fwd_kernel", "_scan_bwd_kernel"):
        monkeypatch.setattr(scan, name, _GridRecorder(grids))
    u, delta = (torch.zeros(MAX_GRID_AXIS + 1, 1, 1, requires_grad=True) for _ in range(2))
    A, B, C = (torch.zeros(1, 1, requires_grad=True) for _ in range(3))
    scan.selective_scan_triton(u, delta, A, B, C).sum().backward()
    assert len(grids) >= 4
    for grid in grids:
        assert grid[0] < 2 ** 31 and max(grid[1:]) <= MAX_GRID_AXIS, grid
