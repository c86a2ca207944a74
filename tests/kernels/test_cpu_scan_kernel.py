"""The cpu backend's C kernel and its PyTorch fallback against the reference: outputs and all gradients in fp32."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from localmamba_ssm import selective_scan_ref
from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_ssm.ops.cpu.selective_scan_cpu import load_kernel, selective_scan_cpu


def make(bc, dstate, groups=1, batch=2, dim=12, seqlen=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, seqlen, generator=g)
    delta = torch.randn(batch, dim, seqlen, generator=g) * 0.5
    A = -torch.rand(dim, dstate, generator=g) * 3 - 0.05
    if bc == "const":
        B, C = torch.randn(dim, dstate, generator=g), torch.randn(dim, dstate, generator=g)
    elif bc == "var3":
        B, C = torch.randn(batch, dstate, seqlen, generator=g), torch.randn(batch, dstate, seqlen, generator=g)
    else:
        B = torch.randn(batch, groups, dstate, seqlen, generator=g)
        C = torch.randn(batch, groups, dstate, seqlen, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, seqlen, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def run(fn, inputs, softplus, use_z, with_last):
    u, delta, A, B, C, D, z, bias = inputs
    for t in inputs:
        t.grad = None
    if not softplus:  # keep dt positive, as softplus would
        delta, bias = delta.abs(), bias.abs()
    result = fn(u, delta, A, B, C, D, z if use_z else None, bias, softplus, return_last_state=with_last)
    out, last = result if with_last else (result, None)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    if last is not None:
        loss = loss + (last * torch.randn(last.shape, generator=g)).sum()
    loss.backward()
    grads = [None if t.grad is None else t.grad.clone() for t in inputs]
    return out.detach(), None if last is None else last.detach(), grads


def assert_rel_close(actual, expected, rel=1e-5):
    scale = expected.abs().max().clamp_min(1e-6)
    assert ((actual - expected).abs().max() / scale).item() < rel


# N = 32 and 64: the kernel's unrolled path for four state vectors (8 lanes; 16 with AVX-512)
@pytest.mark.parametrize("bc,dstate,groups", [("var4", 16, 1), ("var4", 5, 3), ("var3", 9, 1), ("const", 16, 1),
                                              ("var4", 24, 2), ("var4", 32, 1), ("const", 64, 1)])
@pytest.mark.parametrize("softplus,use_z,with_last", [(True, True, False), (False, False, True)])
def test_cpu_scan_matches_reference(c_kernel, bc, dstate, groups, softplus, use_z, with_last):
    inputs = make(bc, dstate, groups)
    out_ref, last_ref, grads_ref = run(selective_scan_ref, inputs, softplus, use_z, with_last)
    out, last, grads = run(selective_scan_cpu, inputs, softplus, use_z, with_last)
    assert out.dtype == torch.float32
    assert_rel_close(out, out_ref)
    if with_last:
        assert_rel_close(last, last_ref)
    for name, g, g_ref in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), grads, grads_ref):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert_rel_close(g, g_ref, rel=2e-5)


@contextlib.contextmanager
def torch_threads(count: int):
    """torch runs on `count` threads inside the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_three_threads_match_the_reference(inputs) -> None:
    """The cpu scan run on 3 torch threads gives the reference's outputs and gradients."""
    with torch_threads(3):
        out, _, grads = run(selective_scan_cpu, inputs, True, True, False)
    out_ref, _, grads_ref = run(selective_scan_ref, inputs, True, True, False)
    assert_rel_close(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert_rel_close(g, g_ref, rel=2e-5)


def test_cpu_scan_large_decay_and_threads(c_kernel):
    """Very negative dt*A (decays that underflow to 0) and several worker threads."""
    inputs = make("var4", 16, batch=4, dim=40, seqlen=20)
    with torch.no_grad():
        inputs[2].mul_(40.0)
    assert_three_threads_match_the_reference(inputs)


def test_cpu_scan_tasks_on_the_thread_pool(monkeypatch):
    """Where torch does not run on GNU OpenMP the kernels' tasks run on a Python thread pool: three tasks there (each
    a contiguous slice of the rows, with its own parameter-gradient accumulators) give the reference's outputs and
    gradients."""
    lib = load_kernel()
    if lib is None:
        pytest.skip("the C kernel does not build here: the scan runs its PyTorch fallback")
    for fn in (lib.selective_scan_fwd, lib.selective_scan_bwd):
        monkeypatch.setattr(fn, "lm_runner", None, raising=False)
    with torch_threads(3):
        assert task_runner.num_tasks(4 * 40, 16) == 3
    assert_three_threads_match_the_reference(make("var4", 16, batch=4, dim=40, seqlen=20))


def test_kernel_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALMAMBA_CACHE_DIR", str(tmp_path))
    ckernel.reset()
    try:
        if load_kernel() is None:
            pytest.skip("the C kernel could not be built here")
        files = sorted(p.name for p in tmp_path.iterdir())
        assert len(files) == 1 and files[0].startswith("selective_scan_") and files[0].endswith(".so")
        ckernel.reset()
        assert load_kernel() is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == files
    finally:
        ckernel.reset()


def test_unwritable_cache_falls_back_to_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LOCALMAMBA_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(ckernel.tempfile, "gettempdir", lambda: str(tmp_path))
    ckernel.reset()
    try:
        if ckernel.compiler() is None:
            pytest.skip("no C compiler here")
        assert load_kernel() is not None
        assert any(p.name.startswith("selective_scan_") for p in tmp_path.glob("localmamba-*/*.so"))
    finally:
        ckernel.reset()


KERNELS_AND_THEIR_OPENMP = """
import json
import torch
from localmamba_kernel_runtime import task_runner
from localmamba_ssm.ops.cpu.multi_scan_cpu import load_kernel
lib = load_kernel()
assert lib is not None and task_runner.uses_openmp(lib.multi_scan_recurrence_fwd)
with open('/proc/self/maps') as maps:
    print(json.dumps(sorted({line.split()[-1] for line in maps if 'libgomp' in line})))
"""


@pytest.mark.skipif(not ckernel.torch_uses_gnu_openmp(), reason='torch does not run on GNU OpenMP here')
def test_kernels_share_torchs_openmp_threads():
    """Built with -fopenmp, the kernels run on the OpenMP runtime torch already loaded: one libgomp in a process that
    imports torch and loads them (a fresh one: a test worker may also hold scikit-learn's own libgomp)."""
    out = subprocess.run([sys.executable, '-c', KERNELS_AND_THEIR_OPENMP], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=300)
    gomp = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(gomp) == 1, gomp
