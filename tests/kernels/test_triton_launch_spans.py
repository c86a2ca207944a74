"""Every tensor that a Triton kernel of ``selective_scan_fn``, ``causal_conv1d_fn`` or ``attention_merge_fn``
addresses, forward and backward, spans no more elements than the per-batch-element size its wrapper gives
``batch_slices``: what keeps the kernels' 32-bit offsets in range when a large batch is split into calls
(``localmamba_kernel_runtime.launch_limits``). A size left out of the wrapper's count lets a batch through whose
offsets wrap around on the GPU. The kernels are replaced by recorders (nothing runs, no interpreter needed); one
batch element, so the whole of each tensor is what one element spans. ``multi_scan_inner_fn`` has the same check
in triton_multi_scan_checks.py."""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def tensor_span(t: torch.Tensor) -> int:
    """Elements from a tensor's first to its last, as a kernel's offsets address them."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0


class _SpanRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` records the span of every tensor argument and runs
    nothing."""

    def __init__(self, name, spans):
        self.name, self.spans = name, spans

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.spans.extend((tensor_span(a), self.name, tuple(a.shape))
                              for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return launch


def assert_launches_fit(monkeypatch, module, kernels, run):
    """Run ``run()`` with ``module``'s kernels recorded and its ``batch_slices`` recording the per-element sizes it
    is given; every recorded tensor must fit the smallest of them."""
    spans, bounds = [], []

    def one_call(batch, item_elements, item_grid_rows=None):
        bounds.append(item_elements)
        return [slice(0, batch)]

    monkeypatch.setattr(module, "batch_slices", one_call)
    for name in kernels:
        monkeypatch.setattr(module, name, _SpanRecorder(name, spans))
    run()
    assert bounds and spans
    largest = max(spans)
    assert largest[0] <= min(bounds), (f"{largest[1]} addresses a tensor {largest[2]} of {largest[0]} elements, "
                                       f"the split allows {min(bounds)} per batch element")


# dim 16 (two blocks of 8 channels), N = 16: the deterministic backward's per-block B / C gradients
# (blocks x N x L) are twice the activations; L = 1: the chunk-start states (chunks x N per channel) are N times them
@pytest.mark.parametrize("dim, seqlen, dstate, groups", [(16, 20, 16, 1), (8, 1, 32, 2), (16, 20, 16, 0)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_selective_scan_launches_fit_the_split(monkeypatch, dim, seqlen, dstate, groups, deterministic):
    from localmamba_ssm.ops.triton import selective_scan_triton as scan

    def run():
        g = torch.Generator().manual_seed(0)
        u, delta, z = (torch.randn(1, dim, seqlen, generator=g).requires_grad_() for _ in range(3))
        A = (-torch.rand(dim, dstate, generator=g)).requires_grad_()
        shape = (dim, dstate) if groups == 0 else (1, groups, dstate, seqlen)
        B, C = (torch.randn(shape, generator=g).requires_grad_() for _ in range(2))
        D, bias = (torch.randn(dim, generator=g).requires_grad_() for _ in range(2))
        out, last = scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
        (out.sum() + last.sum()).backward()

    torch.use_deterministic_algorithms(deterministic)
    try:
        assert_launches_fit(monkeypatch, scan, ("_scan_fwd_kernel", "_scan_bwd_kernel"), run)
    finally:
        torch.use_deterministic_algorithms(False)


def test_conv1d_launches_fit_the_split(monkeypatch):
    from localmamba_conv1d import triton_conv1d as conv

    def run():
        x = torch.randn(1, 6, 9, requires_grad=True)
        weight, bias = torch.randn(6, 4, requires_grad=True), torch.randn(6, requires_grad=True)
        conv.causal_conv1d_triton(x, weight, bias, "silu").sum().backward()

    assert_launches_fit(monkeypatch, conv, ("_conv_kernel",), run)


def test_attention_merge_launches_fit_the_split(monkeypatch):
    from localmamba_ssm.ops.triton import attention_merge_triton as merge

    def run():
        g = torch.Generator().manual_seed(0)
        y = torch.randn(1, 3, 40, 6, generator=g, requires_grad=True)
        weights = [torch.randn(s, generator=g, requires_grad=True) for s in ((6,), (6,), (2, 6), (2,), (6, 2), (6,))]
        merge.attention_merge_triton(y, *weights).sum().backward()

    assert_launches_fit(monkeypatch, merge,
                        ("_norm_mean_kernel", "_merge_kernel", "_gate_grad_kernel", "_input_grad_kernel"), run)
