"""torch.compile through the ops (custom ops with fake kernels, no graph break) and ONNX export of the reference."""
import importlib.util

import pytest
import torch

from localmamba_ssm import mamba_inner_fn_no_out_proj, rms_norm_fn, selective_scan_fn

BT, E, L, N, R = 2, 8, 11, 4, 2


def scan_inputs():
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(BT, E, L, generator=g) for _ in range(3))
    A = -torch.rand(E, N, generator=g) - 0.1
    B, C = torch.randn(BT, 2, N, L, generator=g), torch.randn(BT, 2, N, L, generator=g)
    D, bias = torch.randn(E, generator=g), torch.randn(E, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def inner_params():
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(BT, 2 * E, L, generator=g)
    conv_w, conv_b = torch.randn(E, 1, 4, generator=g), torch.randn(E, generator=g)
    x_proj, dt_proj = torch.randn(R + 2 * N, E, generator=g) * 0.3, torch.randn(E, R, generator=g) * 0.3
    A_log, D, dt_bias = torch.rand(E, N, generator=g), torch.randn(E, generator=g), torch.randn(E, generator=g)
    norm_w = torch.rand(E, generator=g) + 0.5
    return [t.requires_grad_() for t in (xz, conv_w, conv_b, x_proj, dt_proj, A_log, D, dt_bias, norm_w)]


def scan_and_sin(u, delta, A, B, C, D, z, bias):
    return selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True).sin()


def inner_and_norm(xz, conv_w, conv_b, x_proj, dt_proj, A_log, D, dt_bias, norm_w):
    y = mamba_inner_fn_no_out_proj(xz, conv_w, conv_b, x_proj, dt_proj, -torch.exp(A_log), None, None, D, dt_bias)
    out, residual = rms_norm_fn(y.transpose(1, 2), norm_w, None, prenorm=True, residual_in_fp32=True, eps=1e-5)
    return out.sum() + residual.square().sum()


def values_and_grads(fn, inputs):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    out.sum().backward()
    return out.detach(), [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("fn,make", [(scan_and_sin, scan_inputs), (inner_and_norm, inner_params)])
def test_compile_fullgraph_matches_eager(cpu_backend, fn, make):
    torch._dynamo.reset()
    inputs = make()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out, grads = values_and_grads(compiled, inputs)
    out_eager, grads_eager = values_and_grads(fn, inputs)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for g, g_eager in zip(grads, grads_eager):
        torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-5)


class InnerModule(torch.nn.Module):
    """The LocalVim use of mamba_inner_fn_no_out_proj, for export."""

    def __init__(self):
        super().__init__()
        _, conv_w, conv_b, x_proj, dt_proj, A_log, D, dt_bias, _ = (torch.nn.Parameter(t.detach())
                                                                    for t in inner_params())
        self.conv_w, self.conv_b, self.x_proj, self.dt_proj = conv_w, conv_b, x_proj, dt_proj
        self.A_log, self.D, self.dt_bias = A_log, D, dt_bias

    def forward(self, xz):
        return mamba_inner_fn_no_out_proj(xz, self.conv_w, self.conv_b, self.x_proj, self.dt_proj,
                                          -torch.exp(self.A_log.float()), None, None, self.D, self.dt_bias.float())


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnx / onnxruntime not installed")
@pytest.mark.parametrize("backend, dynamo", [
    ("reference", False), ("cpu", False),
    pytest.param("cpu", True, marks=pytest.mark.skipif(
        torch.__version__ < "2.8", reason="the torch.export-based exporter needs torch >= 2.8 (export_onnx.py)"))])
def test_inner_function_exports_to_onnx(force_backend, tmp_path, backend, dynamo):
    """The export records the reference ops; a forced kernel backend (LOCALMAMBA_BACKEND=cpu, say, set for training)
    does not reach it: its custom ops have no ONNX form, and the exporters failed on them ("unrecognized namespace
    localmamba::causal_conv1d_cpu_fwd")."""
    import onnxruntime

    force_backend(backend)
    model = InnerModule().eval()
    xz = torch.randn(BT, 2 * E, L)
    path = tmp_path / "inner.onnx"
    torch.onnx.export(model, (xz,), str(path), dynamo=dynamo)
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: xz.numpy()})
    with torch.no_grad():
        expected = model(xz)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


class ScanModule(torch.nn.Module):
    """The scan with grouped B and C, D, z and softplus, for export."""

    def __init__(self):
        super().__init__()
        _, _, A, _, _, D, _, bias = (torch.nn.Parameter(t.detach()) for t in scan_inputs())
        self.A, self.D, self.bias = A, D, bias

    def forward(self, u, delta, B, C, z):
        return selective_scan_fn(u, delta, self.A, B, C, self.D, z, self.bias, delta_softplus=True)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnx / onnxruntime not installed")
def test_exported_scan_graph_grows_with_the_log_of_the_length(tmp_path):
    """The exported scan pairs steps instead of unrolling its loop: each doubling of L adds the same nodes (one more
    level), so L = 256 has 4 levels more than L = 16; onnxruntime's output matches the model at every length, odd ones
    (padded) included."""
    import onnx
    import onnxruntime

    model = ScanModule().eval()
    nodes = {}
    for seqlen in (16, 32, 64, 256, 45):
        g = torch.Generator().manual_seed(seqlen)
        u, delta, z = (torch.randn(BT, E, seqlen, generator=g) for _ in range(3))
        B, C = torch.randn(BT, 2, N, seqlen, generator=g), torch.randn(BT, 2, N, seqlen, generator=g)
        path = str(tmp_path / f"scan{seqlen}.onnx")
        torch.onnx.export(model, (u, delta, B, C, z), path, dynamo=False)
        nodes[seqlen] = len(onnx.load(path).graph.node)
        session = onnxruntime.InferenceSession(path)
        (out,) = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), (u, delta, B, C, z))})
        with torch.no_grad():
            expected = model(u, delta, B, C, z)
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)
    per_level = nodes[32] - nodes[16]
    assert per_level > 0 and nodes[64] - nodes[32] == per_level, nodes
    assert nodes[256] == nodes[16] + 4 * per_level, nodes
