"""Cases that pin details of the C kernels which a mutation audit found the other kernel tests let through (each
docstring names the mutant it kills): exp's clamps at the ends of their ranges, NaN through the decay's upper
clamp, the task runner's status under OpenMP, a vector tail one step short, a last chunk of one step, and fresh
output buffers that must be overwritten. The kernel tests run the C kernels built for every instruction set this
CPU has, against float64 formulas, the reference, or the same kernel with its buffers zeroed."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from localmamba_kernel_runtime import ckernel
from localmamba_ssm import selective_scan_fn, selective_scan_ref
from test_cpu_isa_variants import padded_conv_args
from test_multi_scan_inner import make_problem

needs_compiler = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")


def first_state_only(dim: int) -> torch.Tensor:
    """B = C with only state 0 set to 1: the scan's output is that state alone."""
    bc = torch.zeros(dim, 8)
    bc[:, 0] = 1.0
    return bc


@needs_compiler
@pytest.mark.parametrize("softplus", [False, True])
def test_decays_are_accurate_out_to_the_ends_of_exps_range(cpu_isa, softplus):
    """The decay exp(dt A) for dt A from -86 to 87.5 (e^-86 and e^87.5 are normal floats; exp's clamps are at -88
    and 88, exp2_8's at 2^-126 and 2^127), read off as the ratio of a scan's two steps (the second with u = 0), to
    1e-4 (the kernel's own error there is below 4e-6, the fp32 rounding of dt A included). Positive dt A takes the
    general decay path, non-positive ones with softplus the path that clamps only below. A clamp moved inward
    (exp2_8's upper one to 1000, its lower one to -900, exp's lower one to -80) is off by a factor of 1.4 or more."""
    x = torch.tensor([-86.0, -80.0, -60.0, -20.0, -1.0, 0.0, 1.0, 20.0, 60.0, 80.0, 87.5])
    dim = x.numel()
    delta = torch.full((1, dim, 2), 20.0)
    dt = F.softplus(delta[0, :, 0].double()) if softplus else delta[0, :, 0].double()
    A = (x.double() / dt).float()[:, None].expand(dim, 8).contiguous()
    u = torch.zeros(1, dim, 2)
    u[0, :, 0] = torch.where(x > 40, 1e-30, 1.0)  # the first step's state small where the decay is huge
    bc = first_state_only(dim)
    y = selective_scan_fn(u, delta, A, bc, bc, delta_softplus=softplus).double()
    expected = torch.exp(dt * A[:, 0].double())
    assert ((y[0, :, 1] / y[0, :, 0] - expected).abs() / expected).max() < 1e-4


@needs_compiler
def test_softplus_of_large_negative_inputs_is_accurate(cpu_isa):
    """softplus(x) = e^x (a normal float down to x = -86) for x from -86 to -15, from one scan step with u, B, C = 1,
    to 1e-6 relative (the kernel's error is below 1e-7): exp's lower clamp moved to -80 gives e^-80 there."""
    delta = torch.linspace(-86.0, -15.0, 72).reshape(1, -1, 1)
    dim = delta.shape[1]
    bc = first_state_only(dim)
    y = selective_scan_fn(torch.ones(1, dim, 1), delta, -torch.ones(dim, 8), bc, bc, delta_softplus=True).double()
    expected = F.softplus(delta.double())
    assert ((y - expected).abs() / expected).max() < 1e-6


FIRST_TASK_OUT_OF_MEMORY = r"""
from localmamba_kernel_runtime import task_runner
from localmamba_ssm.ops.cpu import selective_scan_cpu

fn = selective_scan_cpu.load_kernel().selective_scan_fwd
small = selective_scan_cpu.SelectiveScanArgs(batch=1, dim=16, seqlen=16, nstate=16, softplus=1)
huge = selective_scan_cpu.SelectiveScanArgs(batch=1, dim=16, seqlen=2**52, nstate=16, softplus=1)
if not task_runner.uses_openmp(fn):
    print("no openmp")
else:
    try:
        task_runner.run_parallel(fn, [huge, small, small], 0)
        print("no error")
    except task_runner.KernelOutOfMemoryError:
        print("raised")
"""


@needs_compiler
def test_a_failed_task_is_reported_when_openmp_runs_several_tasks_on_one_thread():
    """lm_run_tasks ORs every task's status: with OMP_THREAD_LIMIT=1 one thread runs all three tasks, and the first
    one's failed allocation must still raise (a status overwritten by the later tasks' LM_OK raised nothing)."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1", LOCALMAMBA_CPU_KERNEL="require")
    result = subprocess.run([sys.executable, "-c", FIRST_TASK_OUT_OF_MEMORY], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "no openmp":
        pytest.skip("the kernels are built without OpenMP here (tasks run on a thread pool)")
    assert result.stdout.strip() == "raised"


def scan_with_grads(fn, inputs):
    """Output and the gradients of every input of fn (softplus, z gate, D, delta bias) for a fixed random loss."""
    for t in inputs:
        t.grad = None
    u, delta, A, B, C, D, z, bias = inputs
    out = fn(u, delta, A, B, C, D, z, bias, True)
    (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum().backward()
    return [out.detach()] + [t.grad.clone() for t in inputs]


@needs_compiler
@pytest.mark.parametrize("seqlen", [7, 15, 31])
def test_scan_backward_at_lengths_one_short_of_a_vector(cpu_isa, seqlen):
    """Sequences whose last vector of steps holds VW - 1 of them (7 and 15 with 8 lanes, 15 and 31 with 16; the
    other kernel tests reach no such tail): the element-wise pass must store that tail part by part. A whole
    vector stored there ran one float past each of its per-step buffers into the next one's first step, and the
    backward's softplus derivative, gate and sigmoid(z) of step 0 went wrong (dz off by up to 3.8) while every other
    kernel test passed."""
    g = torch.Generator().manual_seed(0)
    batch, dim, state = 2, 3, 8
    inputs = [torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, seqlen, generator=g) * 0.5,
              -torch.rand(dim, state, generator=g) - 0.1, torch.randn(batch, state, seqlen, generator=g),
              torch.randn(batch, state, seqlen, generator=g), torch.randn(dim, generator=g),
              torch.randn(batch, dim, seqlen, generator=g), torch.randn(dim, generator=g)]
    inputs = [t.requires_grad_() for t in inputs]
    expected = scan_with_grads(selective_scan_ref, inputs)
    actual = scan_with_grads(selective_scan_fn, inputs)
    names = ("out", "u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    for name, a, e in zip(names, actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def _after_freed_blocks(shape, backward):
    """``backward()`` three times: after eight freed blocks of ``shape`` filled with 0, then twice with NaN (the
    allocator likely hands one back for a fresh buffer of that size)."""
    results = []
    for fill in (0.0, float("nan"), float("nan")):
        blocks = [torch.full(shape, fill) for _ in range(8)]
        del blocks
        results.append(backward())
    return results


@needs_compiler
def test_the_projection_gradient_past_the_last_token_is_zero(cpu_isa):
    """With a conv, the x_proj weight gradient is dxdbl^T u over every position, and dxdbl (K, Bt, L, R + 2N) comes
    from a fresh buffer: past a direction's last real token the backward must write 0 there, not leave the memory,
    which may hold NaN (times u's zeros: NaN). Eight blocks of its size filled with NaN are freed just before each
    call, so that the allocator is likely to hand one back for dxdbl; without that store the weight gradient came
    back NaN."""
    args = padded_conv_args()
    y, u, xdbl, ckpt = torch.ops.localmamba.multi_scan_cpu_fwd(*args, True, True)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))

    def backward():
        return torch.ops.localmamba.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, ckpt)[3]

    grads = _after_freed_blocks(xdbl.shape, backward)
    assert grads[0].isfinite().all()
    assert torch.equal(grads[1], grads[0]) and torch.equal(grads[2], grads[0])


@needs_compiler
@pytest.mark.parametrize("conv", [True, False])
@pytest.mark.parametrize("length", [17, 33])
def test_multi_scan_backward_recomputes_the_state_before_a_last_chunk_of_one_step(cpu_isa, conv, length):
    """With no saved chunk-start states the backward recomputes them in a forward sweep, which may skip only the
    last chunk. Lengths of one more than a multiple of the 16-step chunk (the last chunk one step long: the other
    tests' random padding never made one) must give exactly the backward from the saved states; a sweep that also
    skipped the chunk before such a last one passed every other kernel test."""
    p = make_problem(batch=2, num_tokens=length, length=length, num_dirs=2, inner=12, conv=conv)
    args = [p["tokens"], p["index"], p["conv_weight"].flatten(2) if conv else None, p["conv_bias"], p["x_proj_weight"],
            p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"], p["D"]]
    args = [None if a is None else a.detach().contiguous() for a in args]
    op = torch.ops.localmamba
    y, u, xdbl, ckpt = op.multi_scan_cpu_fwd(*args, True, True)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    saved = op.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, ckpt)
    recomputed = op.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, ckpt.new_empty(0))
    for got, want in zip(recomputed, saved):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_compiler
@pytest.mark.parametrize("conv", [True, False])
def test_the_token_gradient_overwrites_a_fresh_buffer(cpu_isa, conv):
    """With token rows of exactly [x | z] (2E channels, as the models' in_proj gives them) the backward's token
    gradient dsrc comes from a fresh buffer, which the first direction must overwrite (the others add to it), both
    the x channels (the conv's backward, or the scan's) and the z channels (the gate's). The other tests' token rows
    carry one more channel, which gives a zeroed buffer, where adding from the first direction on passed too. Eight
    blocks of its size filled with NaN are freed before each call so that the allocator likely hands one back."""
    p = make_problem(batch=2, num_tokens=11, length=14, num_dirs=2, inner=12, conv=conv)
    tokens = p["tokens"][..., :24]
    args = [tokens, p["index"], p["conv_weight"].flatten(2) if conv else None, p["conv_bias"], p["x_proj_weight"],
            p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"], p["D"]]
    args = [None if a is None else a.detach().contiguous() for a in args]
    y, u, xdbl, ckpt = torch.ops.localmamba.multi_scan_cpu_fwd(*args, True, True)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))

    def backward():
        return torch.ops.localmamba.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, ckpt)[0]

    grads = _after_freed_blocks(tokens.shape, backward)
    assert grads[0].isfinite().all() and grads[0][..., :12].abs().max() > 0 and grads[0][..., 12:].abs().max() > 0
    assert torch.equal(grads[1], grads[0]) and torch.equal(grads[2], grads[0])


@needs_compiler
@pytest.mark.parametrize("softplus", [False, True])
def test_a_nan_in_A_reaches_the_scan_output_as_in_the_reference(cpu_isa, softplus):
    """A NaN in A makes every output of its channel NaN (its decay is NaN from the first step), as torch computes
    it. The decay's upper clamp (min_v) must pass the NaN on: with the operands of the AVX2 / AVX-512 minimum
    swapped it became the clamp bound, a finite decay, the first step's output finite, and every other kernel test
    passed (their NaN cases put it in delta or in multi-scan's A, whose decays clamp only below)."""
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 3, 21, generator=g), torch.rand(2, 3, 21, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 21, generator=g), torch.randn(2, 4, 21, generator=g)
    A[1, 2] = float("nan")
    out = selective_scan_fn(u, delta, A, B, C, delta_softplus=softplus)
    expected = torch.zeros(2, 3, 21, dtype=torch.bool)
    expected[:, 1] = True
    assert torch.equal(out.isnan(), expected)
