"""The cpu backends and the C kernel runtime at the edges a user meets: an empty batch, a changed default dtype, an
index table that misses a token, a corrupt cached library, and thread pools shared by concurrent callers."""
import os
import subprocess
import sys
import threading

import pytest
import torch

from localmamba_conv1d import causal_conv1d_fn
from localmamba_kernel_runtime import task_runner
from localmamba_ssm import attention_merge_fn, multi_scan_attention_merge_fn, multi_scan_inner_fn, selective_scan_fn
from localmamba_ssm.ops.cpu import multi_scan_cpu

from test_multi_scan_inner import attention_problem, grads, make_problem

pytestmark = pytest.mark.skipif(not multi_scan_cpu.kernel_available(), reason="the C kernels cannot be built here")


def attention_weights(p):
    """Channel-attention weights for the problem ``p`` (each needing its gradient)."""
    return attention_problem(dim=p['x_proj_weight'].shape[2], num_dirs=p['index'].shape[0])[1:]


def fused_call(p, gate, attention=None):
    """multi_scan_inner_fn, or given ``attention`` weights the scan and the channel attention in one call
    -> (output, the tensors whose gradients to compare)."""
    if attention is None:
        return multi_scan_inner_fn(**p, gate=gate), list(p.values())
    out = multi_scan_attention_merge_fn(**p, gate=gate, attention_weights=attention)
    return out, list(p.values()) + list(attention)


@pytest.mark.parametrize('merge', [False, True])
@pytest.mark.parametrize('conv', [True, False])
def test_backward_of_an_empty_batch_gives_zero_gradients(force_backend, conv, merge):
    """A batch of 0 images runs forward and backward as the reference does (it raised a reshape error)."""
    force_backend("cpu")
    p = make_problem(batch=0, conv=conv)
    out, inputs = fused_call(p, True, attention_weights(p) if merge else None)
    assert out.shape[0] == 0
    inputs = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]
    for t, g in zip(inputs, grads(out, inputs, torch.ones_like(out))):
        assert g is None or (g.shape == t.shape and not g.any())


@pytest.mark.parametrize('merge', [False, True])
def test_fp32_inputs_run_under_a_float64_default_dtype(force_backend, monkeypatch, merge):
    """The kernels' reused fp32 buffers are fp32 whatever ``torch.set_default_dtype`` says (a float64 default made
    them fp64: 'expected scalar type Float but found Double')."""
    monkeypatch.setattr(multi_scan_cpu, "_SCRATCH", threading.local())   # buffers made afresh under the default
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem(conv=True).items()}
    attention = [t.detach() for t in attention_weights(p)] if merge else None
    force_backend("reference")
    expected, _ = fused_call(p, True, attention)
    force_backend("cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            out, _ = fused_call(p, True, attention)
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('conv', [True, False])
def test_an_index_that_misses_a_token_is_refused(force_backend, conv):
    """A direction that does not list every token once would leave that token's output (and gradient) unwritten:
    the cpu backend refuses it instead of returning uninitialised memory."""
    force_backend("cpu")
    p = make_problem(conv=conv)
    index = p['index'].clone()
    index[1, index[1] == 3] = p['tokens'].shape[1]        # direction 1 pads where token 3 was
    p['index'] = index
    with pytest.raises(ValueError, match="every token"):
        multi_scan_inner_fn(**p, gate=True)
    index[1, index[1] == p['tokens'].shape[1]] = 5         # token 5 twice, token 3 never
    with pytest.raises(ValueError, match="every token"):
        multi_scan_inner_fn(**p, gate=True)


LOAD_AND_REPORT = ("from localmamba_conv1d.cpu_conv1d import load_kernel; "
                   "from localmamba_kernel_runtime import task_runner; "
                   "lib = load_kernel(); print(lib.lm_isa, task_runner.uses_openmp(lib.causal_conv1d_fwd))")


def test_a_corrupt_cached_library_is_rebuilt(tmp_path):
    """A cached .so that does not load (truncated, overwritten) is rebuilt, not silently replaced by a build without
    OpenMP or for a lower instruction set. (In fresh processes: one that loaded the library would reuse it.)"""
    env = {**os.environ, "LOCALMAMBA_CACHE_DIR": str(tmp_path)}

    def load_and_report() -> str:
        return subprocess.run([sys.executable, "-c", LOAD_AND_REPORT], env=env, check=True, capture_output=True,
                              text=True, timeout=300).stdout

    fresh = load_and_report()
    built = sorted(tmp_path.iterdir())
    for path in built:
        path.write_bytes(b"not a shared library")
    assert load_and_report() == fresh
    assert sorted(tmp_path.iterdir()) == built
    assert load_and_report() == fresh


def test_a_thread_pool_stays_usable_when_another_caller_grows_it():
    """Without OpenMP, kernels run on a shared thread pool: a caller that got the pool can still submit to it after
    a concurrent caller needing more workers made a bigger one (the old pool was shut down under it)."""
    pool = task_runner._pool(1)
    task_runner._pool(task_runner._POOL["size"] + 1)
    assert pool.submit(sum, [1, 2]).result() == 3


def test_conv1d_refuses_weights_on_another_device(force_backend):
    """A weight or bias on another device than x is refused by name: the cpu kernel would read its memory as host
    memory (it returned garbage for a meta weight, and would crash on a CUDA one)."""
    force_backend("cpu")
    x, w, b = torch.randn(2, 3, 5), torch.randn(3, 4), torch.randn(3)
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        causal_conv1d_fn(x, w.to("meta"), b, "silu")
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        causal_conv1d_fn(x, w, b.to("meta"), "silu")


@pytest.mark.parametrize('name', ['index', 'dt_proj_weight', 'dt_proj_bias', 'A_log', 'D', 'conv_weight', 'conv_bias'])
def test_multi_scan_refuses_inputs_on_another_device(force_backend, name):
    """Every input of multi_scan_inner_fn on another device than the tokens is refused by name, before any kernel
    reads it."""
    force_backend("cpu")
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    p[name] = p[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but tokens are on cpu"):
        multi_scan_inner_fn(**p, gate=True)


@pytest.mark.parametrize('merge', [False, True])
def test_attention_merge_refuses_weights_on_another_device(force_backend, merge):
    """Channel-attention weights on another device than the outputs are refused by name (with meta weights the cpu
    backend returned garbage on the cpu)."""
    force_backend("cpu")
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    y, *weights = [t.detach() for t in attention_problem(dim=p['x_proj_weight'].shape[2])]
    weights[2] = weights[2].to("meta")
    with pytest.raises(ValueError, match="reduce_weight is on meta but the outputs are on cpu"):
        if merge:
            multi_scan_attention_merge_fn(**p, gate=True, attention_weights=weights)
        else:
            attention_merge_fn(y, *weights)


@pytest.mark.parametrize('merge', [False, True])
@pytest.mark.parametrize('name, shape, message', [
    ('select_weight', (7, 5), r"select_weight must have shape \(12, 5\) for E = 12 channels, got \(7, 5\)"),
    ('select_weight', (1, 5), r"select_weight must have shape \(12, 5\)"),
    ('select_bias', (7,), r"select_bias must have shape \(12,\)"),
    ('reduce_weight', (5, 7), r"reduce_weight must have shape \(5, 12\)"),
    ('reduce_bias', (4,), r"reduce_bias must have shape \(5,\)"),
    ('norm_bias', (1,), r"norm_bias must have shape \(12,\)"),
])
def test_attention_weights_that_do_not_fit_the_channels_are_refused(force_backend, merge, name, shape, message):
    """A gate of another width than E was read by the kernels with E's row stride, past its end (garbage that
    changed from call to call); every weight's shape is now checked against E and the bottleneck width E'."""
    force_backend("cpu")
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    y, *weights = [t.detach() for t in attention_problem(dim=p['x_proj_weight'].shape[2])]
    position = ("norm_weight", "norm_bias", "reduce_weight", "reduce_bias", "select_weight", "select_bias").index(name)
    weights[position] = torch.randn(shape)
    with pytest.raises(ValueError, match=message):
        if merge:
            multi_scan_attention_merge_fn(**p, gate=True, attention_weights=weights)
        else:
            attention_merge_fn(y, *weights)


def test_attention_merge_names_the_weights_it_misses(force_backend):
    force_backend("cpu")
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    weights = [t.detach() for t in attention_problem(dim=p['x_proj_weight'].shape[2])[1:]]
    with pytest.raises(ValueError, match="expected the 6 weights norm_weight, .*select_bias, got 4"):
        multi_scan_attention_merge_fn(**p, gate=True, attention_weights=weights[:4])


def test_a_conv_of_width_zero_is_refused(force_backend):
    """Width 0 ran the forward and killed the process with a division by zero in the backward (SIGFPE)."""
    force_backend("cpu")
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    p['conv_weight'] = torch.randn(*p['conv_weight'].shape[:-1], 0)
    with pytest.raises(ValueError, match=r"conv_weight must have shape .* and W >= 1, got \(3, 12, 1, 0\)"):
        multi_scan_inner_fn(**p, gate=True)
    with pytest.raises(ValueError, match=r"width >= 1, got \(3, 0\)"):
        causal_conv1d_fn(torch.randn(2, 3, 5), torch.randn(3, 0))


def test_attention_merge_without_tokens_gives_zero_weight_gradients(force_backend):
    """No tokens: an empty output, on which nothing depends, so every gradient is 0 (the token mean divided by 0 made
    the cpu kernel's weight gradients NaN, as 0 x NaN does in the backward of torch's composition)."""
    force_backend("cpu")
    y, *weights = attention_problem(num_tokens=0)
    out = attention_merge_fn(y, *weights)
    assert out.shape == (2, 0, 12)
    for g in torch.autograd.grad(out.sum(), [y, *weights], allow_unused=True):
        assert g is None or (torch.isfinite(g).all() and not g.any())


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
def test_integer_inputs_and_an_empty_sequence_are_refused_by_name(force_backend, backend):
    """The cpu backend computed integer tokens in fp32 and returned them as integers; a scan of length 0 raised an
    IndexError (the reference a stack error)."""
    force_backend(backend)
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem().items()}
    p['tokens'] = (p['tokens'] * 10).long()
    with pytest.raises(ValueError, match="multi_scan_inner: tokens must be a floating-point tensor, got torch.int64"):
        multi_scan_inner_fn(**p, gate=True)
    y, *weights = [t.detach() for t in attention_problem()]
    with pytest.raises(ValueError, match="attention_merge: y must be a floating-point tensor, got torch.int32"):
        attention_merge_fn(y.int(), *weights)
    u = torch.randn(2, 3, 0)
    with pytest.raises(ValueError, match=r"u needs at least one step \(L >= 1\), got \(2, 3, 0\)"):
        selective_scan_fn(u, u, -torch.rand(3, 4), torch.randn(2, 4, 0), torch.randn(2, 4, 0))


@pytest.mark.parametrize('op, conv', [('multi_scan', True), ('multi_scan', False), ('attention_merge', False),
                                      ('multi_scan_attention_merge', True), ('multi_scan_attention_merge', False)])
def test_gradients_stay_fp32_when_the_backward_runs_under_autocast(force_backend, op, conv):
    """fp32 inputs, forward and backward inside a bf16 autocast region: every gradient equals the one computed
    without autocast (the matmuls of the backward ran in bf16 there: the x projection's and the gate MLP's
    gradients 2e-3 to 1e-2 off; found by kernel_fuzz_checks.py --backend cpu)."""
    force_backend("cpu")
    p = make_problem(batch=1, num_tokens=5, length=6, num_dirs=2, inner=3, rank=1, state=2, width=2, conv=conv)
    attention = attention_weights(p)
    y = attention_problem(batch=1, num_dirs=2, num_tokens=5, dim=3, hidden=2)[0]

    def call():
        if op == 'multi_scan':
            return fused_call(p, True)
        if op == 'attention_merge':
            return attention_merge_fn(y, *attention), [y, *attention]
        return fused_call(p, True, attention)

    out, inputs = call()
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    expected = grads(out, inputs, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, inputs = call()
        got = grads(out, inputs, weight)
    for g, e in zip(got, expected):
        assert g is not None and g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
