"""Every Triton op launches its kernels with its tensors' CUDA device current: Triton launches a kernel on the current
device whatever device its tensors are on, so a model on ``cuda:1`` in a process whose current device is ``cuda:0``
ran its kernels on GPU 0 with GPU 1's memory (a CUDA op's device guard does this for the official kernels).

No GPU here: the tensors' device is reported as ``cuda:1`` (``launch_limits.cuda_device_of``), ``torch.cuda.device``
is replaced by a recorder of the device it makes current, and every kernel by a recorder of the current device at
its launch (nothing runs, no interpreter needed)."""
import contextlib
import importlib
import importlib.util

import pytest
import torch

from localmamba_kernel_runtime import launch_limits

from second_derivative_problems import _attention_inputs, _mixer_inputs, _rand

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

GPU_1 = torch.device("cuda", 1)


class _LaunchRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` records (kernel name, current device) and runs nothing."""

    def __init__(self, name, current, launches):
        self.name, self.current, self.launches = name, current, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, self.current[-1]))


def record_launches(monkeypatch, module):
    """Replace ``module``'s kernels with recorders and ``torch.cuda.device`` with a stack of current devices (the
    process starts on None: no device made current); returns the list the launches are appended to."""
    import triton

    current, launches = [None], []

    @contextlib.contextmanager
    def make_current(device):
        current.append(torch.device(device))
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(torch.cuda, "device", make_current)
    monkeypatch.setattr(launch_limits, "cuda_device_of", lambda args: GPU_1)
    for name, value in vars(module).items():
        if name.endswith("_kernel") and isinstance(value, triton.runtime.jit.JITFunction):
            monkeypatch.setattr(module, name, _LaunchRecorder(name, current, launches))
    return launches


def run_selective_scan(scan):
    g = torch.Generator().manual_seed(0)
    u, delta, z = (_rand(g, 2, 4, 9) for _ in range(3))
    A, B, C, D, bias = _rand(g, 4, 8), _rand(g, 2, 8, 9), _rand(g, 2, 8, 9), _rand(g, 4), _rand(g, 4)
    scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, True).sum().backward()


def run_causal_conv1d(conv):
    g = torch.Generator().manual_seed(1)
    conv.causal_conv1d_triton(_rand(g, 2, 4, 9), _rand(g, 4, 4), _rand(g, 4), "silu").sum().backward()


def run_multi_scan_inner(multi_scan):
    multi_scan.multi_scan_inner_triton(*_mixer_inputs(torch.Generator().manual_seed(2), 3), gate=True).sum().backward()


def run_attention_merge(merge):
    g = torch.Generator().manual_seed(3)
    merge.attention_merge_triton(_rand(g, 2, 3, 5, 4), *_attention_inputs(g)).sum().backward()


@pytest.mark.parametrize("module, run, kernels", [
    ("localmamba_ssm.ops.triton.selective_scan_triton", run_selective_scan, {"_scan_fwd_kernel", "_scan_bwd_kernel"}),
    ("localmamba_conv1d.triton_conv1d", run_causal_conv1d, {"_conv_kernel"}),
    ("localmamba_ssm.ops.triton.multi_scan_triton", run_multi_scan_inner,
     {"_conv_fwd_kernel", "_conv_bwd_pre_kernel", "_conv_bwd_x_kernel", "_scan_fwd_kernel", "_scan_bwd_kernel"}),
    ("localmamba_ssm.ops.triton.attention_merge_triton", run_attention_merge,
     {"_norm_mean_kernel", "_merge_kernel", "_gate_grad_kernel", "_input_grad_kernel"}),
], ids=["selective_scan", "causal_conv1d", "multi_scan_inner", "attention_merge"])
def test_every_kernel_launches_on_its_tensors_gpu(monkeypatch, module, run, kernels):
    module = importlib.import_module(module)
    launches = record_launches(monkeypatch, module)
    run(module)
    assert {name for name, _ in launches} == kernels          # forward and backward, every kernel of the op
    assert {device for _, device in launches} == {GPU_1}, launches


def test_a_cpu_tensor_makes_no_device_current(monkeypatch):
    """Under the interpreter (CPU tensors) nothing is made current: ``torch.cuda.device`` needs a CUDA build."""
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    op = launch_limits.on_tensor_device(lambda x, scale: x * scale)
    assert torch.equal(op(torch.ones(2), scale=3.0), torch.full((2,), 3.0)) and entered == []
    assert launch_limits.cuda_device_of([None, 2, torch.ones(1)]) is None
