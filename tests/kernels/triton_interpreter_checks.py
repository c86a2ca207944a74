"""Checks of the Triton kernels against the references, run by test_triton_interpreter.py in a subprocess with
TRITON_INTERPRET=1 (the interpreter must be chosen before the kernels are defined) and LOCALMAMBA_BACKEND=triton.
Exits non-zero with a message on the first mismatch."""
import os
import sys

import torch
from batch_splitting import one_element_per_call
from fast_interpreter import use_fast_interpreter
from second_derivative_problems import check_second_derivatives_refused

from localmamba_conv1d import causal_conv1d_fn, causal_conv1d_ref, selected_backend, triton_conv1d
from localmamba_ssm import attention_merge_fn, selective_scan_fn, selective_scan_ref
from localmamba_ssm.ops.triton import selective_scan_triton


def grads_of(fn, inputs, weights):
    for t in inputs:
        t.grad = None
    outs = fn()
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum(o.float().mul(w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach() for o in outs], [None if t.grad is None else t.grad.clone() for t in inputs]


def close(name, actual, expected, tol):
    err = ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)).item()
    if not err < tol:
        sys.exit(f"{name}: relative error {err:.2e} >= {tol:.0e}")


def check_scan(label, bc, groups, dim, seqlen, dstate, softplus, use_z, with_last, dtype=torch.float32,
               deterministic=False, split=False):
    """Outputs and gradients against the reference; ``deterministic``: under
    torch.use_deterministic_algorithms(True), where the B / C gradients are summed per block, not by atomics;
    ``split``: the batch run as one kernel call per element (as a batch too large for one call is)."""
    torch.use_deterministic_algorithms(deterministic)
    try:
        if split:
            with one_element_per_call(selective_scan_triton) as counts:
                _check_scan(label, bc, groups, dim, seqlen, dstate, softplus, use_z, with_last, dtype)
            if max(counts) != 2:
                sys.exit(f"{label}: the batch of 2 was split into {counts} calls, expected 2")
        else:
            _check_scan(label, bc, groups, dim, seqlen, dstate, softplus, use_z, with_last, dtype)
    finally:
        torch.use_deterministic_algorithms(False)


def _check_scan(label, bc, groups, dim, seqlen, dstate, softplus, use_z, with_last, dtype):
    g = torch.Generator().manual_seed(0)
    batch = 2
    u = torch.randn(batch, dim, seqlen, generator=g)
    delta = torch.randn(batch, dim, seqlen, generator=g) * 0.5
    if not softplus:
        delta = delta.abs()
    A = -torch.rand(dim, dstate, generator=g) - 0.1
    if bc == "const":
        B, C = torch.randn(dim, dstate, generator=g), torch.randn(dim, dstate, generator=g)
    elif bc == "var3":
        B, C = torch.randn(batch, dstate, seqlen, generator=g), torch.randn(batch, dstate, seqlen, generator=g)
    else:
        B = torch.randn(batch, groups, dstate, seqlen, generator=g)
        C = torch.randn(batch, groups, dstate, seqlen, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.rand(dim, generator=g) * 0.5
    z = torch.randn(batch, dim, seqlen, generator=g)
    if dtype != torch.float32:
        u, delta, z = u.to(dtype), delta.to(dtype), z.to(dtype)
        if bc != "const":
            B, C = B.to(dtype), C.to(dtype)
    inputs = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    weights = [torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, dstate, generator=g)]

    def call(fn):
        return lambda: fn(u, delta, A, B, C, D, z if use_z else None, bias, softplus, return_last_state=with_last)

    outs, grads = grads_of(call(selective_scan_fn), inputs, weights)
    outs_ref, grads_ref = grads_of(call(selective_scan_ref), inputs, weights)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if outs[0].dtype != dtype:
        sys.exit(f"{label}: output dtype {outs[0].dtype}, expected {dtype}")
    for i, (o, o_ref) in enumerate(zip(outs, outs_ref)):
        close(f"{label} output {i}", o, o_ref, tol)
    for name, gr, gr_ref in zip("u delta A B C D z delta_bias".split(), grads, grads_ref):
        if (gr is None) != (gr_ref is None):
            sys.exit(f"{label} grad {name}: presence differs")
        if gr is not None:
            if gr.dtype != gr_ref.dtype:
                sys.exit(f"{label} grad {name}: dtype {gr.dtype}, expected {gr_ref.dtype}")
            close(f"{label} grad {name}", gr, gr_ref, tol * 3)
    print(f"ok scan {label}")


def check_scan_infinite_decay():
    """A = -inf in one (channel, state) pair (its state forgets everything at every step) at a length that is no
    multiple of the chunk: NaN exactly where the reference has it (the delta gradient of that channel, inf * 0)
    and the same values elsewhere. The steps past the end had decay exp(0 * -inf) = NaN, which reached the last
    state and the u, A and B gradients."""
    g = torch.Generator().manual_seed(2)
    batch, dim, seqlen, dstate = 2, 4, 7, 3
    A = -torch.rand(dim, dstate, generator=g) - 0.1
    A[1, 2] = float("-inf")
    values = [torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, seqlen, generator=g), A,
              torch.randn(batch, 1, dstate, seqlen, generator=g), torch.randn(batch, 1, dstate, seqlen, generator=g),
              torch.randn(dim, generator=g)]
    weights = [torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, dstate, generator=g)]
    results = []
    for fn in (selective_scan_fn, selective_scan_ref):
        inputs = [v.clone().requires_grad_() for v in values]
        results.append(grads_of(lambda: fn(*inputs, None, None, True, return_last_state=True), inputs, weights))
    (outs, grads), (outs_ref, grads_ref) = results
    for name, actual, expected in zip(["output", "last state"] + [f"grad {n}" for n in "u delta A B C D".split()],
                                      outs + grads, outs_ref + grads_ref):
        if not torch.equal(actual.isnan(), expected.isnan()):
            sys.exit(f"A = -inf, {name}: NaN at {int(actual.isnan().sum())} places, the reference at "
                     f"{int(expected.isnan().sum())}")
        finite = ~expected.isnan()
        close(f"A = -inf, {name}", actual[finite], expected[finite], 3e-4)
    print("ok scan A = -inf")


def entrywise(name, actual, expected, tol, dim=None):
    """Relative error of each entry (``dim``: of each slice along it, to its own largest entry) against an fp64
    expectation."""
    diff = (actual.double() - expected).abs()
    scale = expected.abs() if dim is None else expected.abs().amax(dim=dim, keepdim=True)
    err = (diff / scale.clamp_min(1e-30)).max().item()
    if not err < tol:
        sys.exit(f"{name}: relative error {err:.2e} >= {tol:.0e}")


def check_scan_step_extremes():
    """fp32 precision at the ends of dt's range, each channel and each A entry to its own scale: raw deltas near -12
    and -7 (softplus was log(1 + e^x), which drops e^x's relative precision in 1 + e^x: outputs 14% off at -12,
    2e-4 at -7), and dt near 1 and 2 with A = -1 .. -8 (a_t h_{t-1} was recovered as h_t - b_t, which cancels where
    the decay e^{dt A} is near 0: the A gradient of such a state up to 100% off)."""
    g = torch.Generator().manual_seed(4)
    batch, dim, seqlen, dstate = 1, 4, 9, 8
    shift = torch.tensor([-12.0, -7.0, 0.5, 2.0])[:, None]
    values = [torch.randn(batch, dim, seqlen, generator=g), shift + 0.2 * torch.rand(batch, dim, seqlen, generator=g),
              -torch.arange(1.0, dstate + 1).repeat(dim, 1), torch.randn(batch, dstate, seqlen, generator=g),
              torch.randn(batch, dstate, seqlen, generator=g)]
    weights = [torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, dstate, generator=g)]
    results = []
    for fn, dtype in ((selective_scan_fn, torch.float32), (selective_scan_ref, torch.float64)):
        inputs = [v.to(dtype, copy=True).requires_grad_() for v in values]
        results.append(grads_of(lambda: fn(*inputs, None, None, None, True, return_last_state=True), inputs,
                                weights))
    (outs, grads), (outs64, grads64) = results
    entrywise("dt extremes: output", outs[0], outs64[0], 1e-4, dim=(0, 2))
    entrywise("dt extremes: last state", outs[1], outs64[1], 1e-4, dim=(0, 2))
    for name, actual, expected in zip("u delta".split(), grads, grads64):
        entrywise(f"dt extremes: grad {name}", actual, expected, 1e-4, dim=(0, 2))
    entrywise("dt extremes: grad A", grads[2], grads64[2], 1e-3)
    print("ok scan dt extremes")


def check_conv(width, activation, with_bias, dtype=torch.float32, split=False):
    """Outputs and gradients against the reference; ``split``: the batch run as one kernel call per element."""
    if split:
        with one_element_per_call(triton_conv1d) as counts:
            _check_conv(width, activation, with_bias, dtype, ", batch split into one call per element")
        if max(counts) != 2:
            sys.exit(f"conv W={width}: the batch of 2 was split into {counts} calls, expected 2")
    else:
        _check_conv(width, activation, with_bias, dtype, "")


def _check_conv(width, activation, with_bias, dtype, note):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, generator=g).to(dtype).requires_grad_()
    w = torch.randn(5, width, generator=g).requires_grad_()
    b = torch.randn(5, generator=g).requires_grad_() if with_bias else None
    inputs = [x, w] + ([b] if with_bias else [])
    weights = [torch.randn(2, 5, 9, generator=g)]
    outs, grads = grads_of(lambda: causal_conv1d_fn(x, w, b, activation), inputs, weights)
    outs_ref, grads_ref = grads_of(lambda: causal_conv1d_ref(x, w, b, activation), inputs, weights)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    close(f"conv W={width} output", outs[0], outs_ref[0], tol)
    for gr, gr_ref in zip(grads, grads_ref):
        close(f"conv W={width} grad", gr, gr_ref, tol * 3)
    print(f"ok conv1d W={width} act={activation} bias={with_bias} {dtype}{note}")


def check_conv_across_time_blocks():
    """The conv's tiles are BLOCK_T steps long (64: every other check fits one). With BLOCK_T = 4, sequences of 11
    steps span three time blocks, the last a partial one: each block's first steps read the previous block's last
    W - 1 inputs (the forward), and its last steps the next block's first gradients (the input gradient), and W = 7
    reaches back across more than one block. Outputs and gradients against the reference."""
    saved = triton_conv1d.BLOCK_T
    triton_conv1d.BLOCK_T = 4
    try:
        for width, activation in ((4, "silu"), (7, None)):
            g = torch.Generator().manual_seed(width)
            x = torch.randn(2, 3, 11, generator=g).requires_grad_()
            w = torch.randn(3, width, generator=g).requires_grad_()
            b = torch.randn(3, generator=g).requires_grad_()
            weights = [torch.randn(2, 3, 11, generator=g)]
            outs, grads = grads_of(lambda: causal_conv1d_fn(x, w, b, activation), [x, w, b], weights)
            outs_ref, grads_ref = grads_of(lambda: causal_conv1d_ref(x, w, b, activation), [x, w, b], weights)
            close(f"conv across time blocks W={width} output", outs[0], outs_ref[0], 1e-5)
            for name, gr, gr_ref in zip(("x", "weight", "bias"), grads, grads_ref):
                close(f"conv across time blocks W={width} grad {name}", gr, gr_ref, 3e-5)
    finally:
        triton_conv1d.BLOCK_T = saved
    print("ok conv1d across three time blocks of 4 steps (W=4 and W=7)")


def check_conv_reads_only_its_window():
    """Width 3, whose taps the kernel pads to 4 (masked twice: the weight's load and the input's): an inf in x at
    step 5 of one channel makes the outputs NaN / inf from step 5 on only, as on the reference (the padded tap reads
    x one step ahead: it must never be multiplied in), and a weight whose storage continues with NaN (a view into a
    larger buffer, as a flat parameter buffer gives) leaves every output finite (the padded tap must not load past
    the weight's last row)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 9, generator=g)
    x[1, 2, 5] = float("inf")
    storage = torch.full((5 * 3 + 4,), float("nan"))
    storage[:15] = torch.randn(15, generator=g)
    weight = storage[:15].view(5, 3)
    bias = torch.randn(5, generator=g)
    for activation in (None, "silu"):
        out = causal_conv1d_fn(x, weight, bias, activation)
        expected = causal_conv1d_ref(x, weight, bias, activation)
        finite = expected.isfinite()
        if not torch.equal(out.isfinite(), finite) or finite.sum() != out.numel() - 3:
            sys.exit(f"conv W=3, act={activation}, inf in x at step 5: non-finite outputs at "
                     f"{(~out.isfinite()).nonzero().tolist()}, the reference's at {(~finite).nonzero().tolist()}")
        close(f"conv W=3, act={activation}, inf in x at step 5", out[finite], expected[finite], 1e-5)
    print("ok conv1d reads only its causal window and its weight (W=3, padded taps)")


def check_empty_batch():
    """A batch of 0 gives empty outputs and zero gradients, as the references do (the conv and attention-merge
    wrappers indexed the batch's first element to size their launches, an IndexError)."""
    x, weight = torch.randn(0, 5, 9, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    y = torch.randn(0, 2, 9, 8, requires_grad=True)
    merge = [t.requires_grad_() for t in (torch.randn(8), torch.randn(8), torch.randn(2, 8), torch.randn(2),
                                          torch.randn(8, 2), torch.randn(8))]
    for out, inputs in ((causal_conv1d_fn(x, weight, None, "silu"), [x, weight]),
                        (attention_merge_fn(y, *merge), [y, *merge])):
        if out.shape[0] != 0:
            sys.exit(f"empty batch: output of shape {tuple(out.shape)}")
        for grad in torch.autograd.grad(out.sum(), inputs, allow_unused=True):
            if grad is not None and grad.any():
                sys.exit("empty batch: a non-zero gradient")
    print("ok empty batch (conv1d, attention merge)")


def check_split_batch_under_other_half_autocast():
    """fp16 inputs in a bf16 autocast region with the batch split into one kernel call per element: the scan and the
    conv compute in fp32 under any autocast, so they give the results of the one-call path outside autocast (the
    split path joined its parts with a torch.cat under the autocast, which refuses fp16 tensors in a bf16 region)."""
    g = torch.Generator().manual_seed(4)
    u, delta, z = (torch.randn(2, 4, 6, generator=g).half().requires_grad_() for _ in range(3))
    A = -torch.rand(4, 3, generator=g) - 0.1
    B, C = (torch.randn(2, 1, 3, 6, generator=g).half().requires_grad_() for _ in range(2))
    w = torch.randn(4, 3, generator=g).half().requires_grad_()
    weights = [torch.randn(2, 4, 6, generator=g)]
    ops = (("scan", selective_scan_triton, lambda: selective_scan_fn(u, delta, A, B, C, z=z, delta_softplus=True),
            [u, delta, z, B, C]),
           ("conv1d", triton_conv1d, lambda: causal_conv1d_fn(u, w, None, "silu"), [u, w]))
    for name, module, fn, inputs in ops:
        outs_ref, grads_ref = grads_of(fn, inputs, weights)
        with one_element_per_call(module) as counts, torch.autocast("cpu", dtype=torch.bfloat16):
            outs, grads = grads_of(fn, inputs, weights)
        if max(counts) != 2:
            sys.exit(f"{name} under autocast: the batch of 2 was split into {counts} calls, expected 2")
        for label, actual, expected in zip(["output"] + [f"grad {i}" for i in range(len(inputs))],
                                           outs + grads, outs_ref + grads_ref):
            if actual.dtype != expected.dtype:
                sys.exit(f"{name} split under bf16 autocast: {label} {actual.dtype}, expected {expected.dtype}")
            close(f"{name} split under bf16 autocast: {label}", actual, expected, 1e-3)
    print("ok scan and conv1d, fp16 batch split into one call per element under bf16 autocast")


def check_split_batch_sums_shared_gradients_in_fp32():
    """fp16 parameters shared by the batch (A, D, the dt bias, a time-invariant B; the conv's weight and bias), the
    batch split into one kernel call per element: their gradients are the one-call path's, summed over the batch in
    fp32 and rounded once. Both elements have the same inputs and output weights w and -0.99 w, so the sum cancels
    to 1% of each part: the split path rounded each part to fp16 before summing them (5% off here; beyond 65504 an
    inf, and NaN where two such parts cancel)."""
    g = torch.Generator().manual_seed(6)

    def pair(*shape):
        return torch.randn(1, *shape, generator=g).expand(2, *shape).contiguous().requires_grad_()

    def half(*shape, shift=0.0):
        return (torch.randn(*shape, generator=g) + shift).half().requires_grad_()

    u, delta, C = pair(4, 6), pair(4, 6), pair(3, 6)
    A, B, D, bias = half(4, 3, shift=-1.0), half(4, 3), half(4), half(4)
    w, b = half(4, 3), half(4)
    weight = torch.randn(1, 4, 6, generator=g)
    weights = [torch.cat([weight, -0.99 * weight])]
    ops = (("scan", selective_scan_triton, lambda: selective_scan_fn(u, delta, A, B, C, D, delta_bias=bias,
                                                                     delta_softplus=True), [A, B, D, bias]),
           ("conv1d", triton_conv1d, lambda: causal_conv1d_fn(u, w, b, "silu"), [w, b]))
    for name, module, fn, shared in ops:
        _, expected = grads_of(fn, shared, weights)
        with one_element_per_call(module) as counts:
            _, actual = grads_of(fn, shared, weights)
        if max(counts) != 2:
            sys.exit(f"{name}: the batch of 2 was split into {counts} calls, expected 2")
        for i, (grad, grad_ref) in enumerate(zip(actual, expected)):
            close(f"{name} split, fp16 shared parameter {i}: gradient", grad, grad_ref, 2e-3)
    print("ok scan and conv1d, batch split into one call per element: fp16 shared parameters' gradients")


def main():
    assert os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("LOCALMAMBA_BACKEND") == "triton"
    assert selected_backend("selective_scan", "cpu") == "triton"
    use_fast_interpreter()
    check_scan("grouped G=2", "var4", 2, dim=4, seqlen=7, dstate=3, softplus=True, use_z=True, with_last=True)
    check_scan("grouped G=2, batch split into one call per element", "var4", 2, dim=4, seqlen=7, dstate=3,
               softplus=True, use_z=True, with_last=True, split=True)
    for deterministic in (False, True):
        check_scan(f"grouped, blocks per group > 1, deterministic={deterministic}", "var4", 2, dim=64, seqlen=5,
                   dstate=4, softplus=True, use_z=False, with_last=False, deterministic=deterministic)
    check_scan("(Bt, N, L), no softplus, several chunks", "var3", 1, dim=2, seqlen=70, dstate=2, softplus=False,
               use_z=True, with_last=True)
    check_scan("time-invariant", "const", 1, dim=6, seqlen=5, dstate=5, softplus=True, use_z=True, with_last=False)
    check_scan("time-invariant, several chunks", "const", 1, dim=4, seqlen=35, dstate=3, softplus=True, use_z=False,
               with_last=True)
    check_scan("bf16", "var4", 1, dim=4, seqlen=6, dstate=4, softplus=True, use_z=True, with_last=False,
               dtype=torch.bfloat16)
    check_scan_infinite_decay()
    check_scan_step_extremes()
    check_conv(4, "silu", True)
    check_conv(4, "silu", True, split=True)
    check_conv(3, None, False)
    check_conv(2, "silu", False, dtype=torch.bfloat16)
    check_conv_across_time_blocks()
    check_conv_reads_only_its_window()
    check_empty_batch()
    check_split_batch_under_other_half_autocast()
    check_split_batch_sums_shared_gradients_in_fp32()
    check_second_derivatives_refused(('selective_scan', 'causal_conv1d'))


if __name__ == "__main__":
    main()
