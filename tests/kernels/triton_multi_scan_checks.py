"""Checks of the fused Triton mixer kernels (``multi_scan_inner`` and ``attention_merge``) against their references,
run by test_triton_multi_scan.py in a subprocess with TRITON_INTERPRET=1 and LOCALMAMBA_BACKEND=triton.

Tiny odd shapes on real index tables (row, column, windowed with padding, flipped; a middle class token; a dt rank
of 18; with a conv and token-major). First the checks of the wrappers at the default tiles: a batch split into one
call per element, torch.library.opcheck of the custom ops, torch.compile against eager. Then the kernels' tile sizes
are shrunk so that every tiling path runs (several time chunks, partial channel blocks, several token blocks) and the
outputs and the gradients of every input are compared, fp32 tightly and bf16 loosely. The interpreter is sped up by
fast_interpreter.py (the same results).
Prints one ``ok`` line per case; exits non-zero with a message at the first mismatch.
"""
import os
import sys
from unittest import mock

import torch
from batch_splitting import one_element_per_call
from fast_interpreter import use_fast_interpreter
from second_derivative_problems import check_second_derivatives_refused
from triton.runtime import interpreter

from classification.models.scan_maps import sequence_index
from localmamba_kernel_runtime import backends
from localmamba_ssm import (attention_merge_fn, attention_merge_ref, multi_scan_attention_merge_fn, multi_scan_inner_fn,
                            multi_scan_inner_ref)
from localmamba_ssm.ops.triton import attention_merge_triton, multi_scan_triton

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 4e-2}
SCAN_ARGS = ("tokens", "index", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D", "conv_weight",
             "conv_bias")


def shrink_tiles():
    multi_scan_triton.SCAN_CHUNK = 16     # 24 or 25 steps (the 3x5 tables, padded): 2 chunks, the last one partial
    multi_scan_triton.SCAN_BLOCK_D = 4    # 5 to 7 channels: a full and a partial block
    multi_scan_triton.CONV_CHUNK = 16     # 2 chunks, the last one partial; the taps reach back across the boundary
    multi_scan_triton.CONV_BLOCK_E = 4
    attention_merge_triton.ROWS = 4
    attention_merge_triton.INPUT_GRAD_ROWS = 4
    attention_merge_triton.MERGE_ROWS = 4
    attention_merge_triton.MERGE_COLS = 8


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)).item()


def compare(label, fn, ref, inputs, dtype):
    """Outputs and the gradients of ``inputs`` (dict) of ``fn`` against ``ref`` under one random output weight."""
    names = [k for k, t in inputs.items() if t is not None and t.requires_grad]
    out, out_ref = fn(), ref()
    if out.dtype != out_ref.dtype or out.shape != out_ref.shape:
        sys.exit(f"{label}: output {out.dtype} {tuple(out.shape)}, expected {out_ref.dtype} {tuple(out_ref.shape)}")
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad((out.float() * weight).sum(), [inputs[k] for k in names])
    grads_ref = torch.autograd.grad((out_ref.float() * weight).sum(), [inputs[k] for k in names])
    tol = TOLERANCE[dtype]
    err = relative_error(out, out_ref)
    if not err < tol:
        sys.exit(f"{label} output: relative error {err:.2e} >= {tol:.0e}")
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        if grad.dtype != grad_ref.dtype:
            sys.exit(f"{label} grad {name}: dtype {grad.dtype}, expected {grad_ref.dtype}")
        err = relative_error(grad, grad_ref)
        if not err < 2 * tol:
            sys.exit(f"{label} grad {name}: relative error {err:.2e} >= {2 * tol:.0e}")
    print(f"ok {label} ({len(names)} gradients)")


def scan_problem(directions, grid, cls_position, inner, state, width, gate, with_d, dtype, seed, rank=2):
    g = torch.Generator().manual_seed(seed)
    index = sequence_index(directions, grid, cls_position)
    num_dirs, num_tokens = len(directions), grid[0] * grid[1] + (cls_position is not None)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    return dict(
        tokens=rand(2, num_tokens, 2 * inner + 1 if gate else inner),
        index=index,
        x_proj_weight=rand(num_dirs, rank + 2 * state, inner, scale=inner ** -0.5),
        dt_proj_weight=rand(num_dirs, inner, rank, scale=rank ** -0.5),
        dt_proj_bias=rand(num_dirs, inner, scale=0.5),
        A_log=rand(num_dirs, inner, state, scale=0.5),
        D=rand(num_dirs, inner) if with_d else None,
        conv_weight=rand(num_dirs, inner, 1, width, scale=0.5) if width else None,
        conv_bias=rand(num_dirs, inner, scale=0.1) if width else None,
    )


def split_batch(label, check, module):
    """Run ``check`` with the batch of 2 split into one kernel call per element by ``module``'s wrapper (as a batch
    too large for one call is)."""
    with one_element_per_call(module) as counts:
        check()
    if max(counts) != 2:
        sys.exit(f"{label}: the batch of 2 was split into {counts} calls, expected 2")


def check_scan(label, gate=True, dtype=torch.float32, deterministic=False, split=False, **problem):
    """``deterministic``: under torch.use_deterministic_algorithms(True), where the backward sums the B / C
    gradients of the channel blocks in torch instead of with atomics; ``split``: one kernel call per batch element."""
    p = scan_problem(gate=gate, dtype=dtype, **problem)
    args = [p[k] for k in SCAN_ARGS]
    label = f"multi_scan_inner {label}" + (", deterministic" if deterministic else "") + (", split" if split else "")

    def check():
        compare(label, lambda: multi_scan_inner_fn(*args, gate=gate), lambda: multi_scan_inner_ref(*args, gate=gate),
                p, dtype)

    torch.use_deterministic_algorithms(deterministic)
    try:
        if split:
            split_batch(label, check, multi_scan_triton)
        else:
            check()
    finally:
        torch.use_deterministic_algorithms(False)


def check_scan_dt_extremes():
    """fp32 precision at the ends of dt's range, each channel and each A_log / dt bias entry to its own scale (fp64
    reference): dt biases near -12 and -7 (softplus was log(1 + e^x): 14% off at -12) and near 1 and 2 with
    A = -1 .. -8 (a_t h_{t-1} was recovered as h_t - b_t, which cancels where e^{dt A} is near 0: the A_log gradient
    of such a state up to 100% off); with a conv and token-major."""
    g = torch.Generator().manual_seed(8)
    index = sequence_index(("h", "v_flip"), (2, 3))
    inner, state, rank, num_dirs = 4, 8, 2, 2
    bias = torch.tensor([-12.0, -7.0, 0.5, 2.0]).repeat(num_dirs, 1)
    values = dict(tokens=torch.randn(1, 6, 2 * inner, generator=g),
                  x_proj_weight=torch.randn(num_dirs, rank + 2 * state, inner, generator=g) * 0.5,
                  dt_proj_weight=torch.randn(num_dirs, inner, rank, generator=g) * 0.05, dt_proj_bias=bias,
                  A_log=torch.arange(1.0, state + 1).log().repeat(num_dirs, inner, 1),
                  conv_weight=torch.randn(num_dirs, inner, 3, generator=g) * 0.5)
    weight = torch.randn(1, num_dirs, 6, inner, generator=g, dtype=torch.float64)
    for with_conv in (True, False):
        results = []
        for fn, dtype in ((multi_scan_inner_fn, torch.float32), (multi_scan_inner_ref, torch.float64)):
            p = {k: v.to(dtype, copy=True).requires_grad_() for k, v in values.items()}
            conv = p["conv_weight"] if with_conv else None
            out = fn(p["tokens"], index, p["x_proj_weight"], p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"],
                     None, conv, None, gate=True)
            names = ["tokens", "dt_proj_bias", "A_log"]
            grads = torch.autograd.grad((out.double() * weight).sum(), [p[k] for k in names])
            results.append(dict(output=out, **dict(zip(names, grads))))
        actual, expected = results
        for name, dims, tol in (("output", (0, 1, 2), 1e-4), ("tokens", (0, 1), 1e-4), ("dt_proj_bias", (), 1e-4),
                                ("A_log", (), 1e-3)):
            diff = (actual[name].double() - expected[name]).abs()
            scale = expected[name].abs().amax(dim=dims, keepdim=True) if dims else expected[name].abs()
            err = (diff / scale.clamp_min(1e-30)).max().item()
            if not err < tol:
                sys.exit(f"multi_scan_inner dt extremes, conv {with_conv}: {name} relative error {err:.2e} >= "
                         f"{tol:.0e}")
    print("ok multi_scan_inner dt extremes (conv and token-major)")


def check_merge(label, batch, num_dirs, num_tokens, channels, dtype, split=False, eps=1e-5):
    """``eps``: the LayerNorm's, given to both ops (a kernel that ignored it for 1e-5 passed every case at 1e-5)."""
    g = torch.Generator().manual_seed(3)
    reduced = max(1, channels // 4)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).requires_grad_()

    p = dict(y=rand(batch, num_dirs, num_tokens, channels), norm_weight=rand(channels, scale=0.1, shift=1.0),
             norm_bias=rand(channels, scale=0.1), reduce_weight=rand(reduced, channels, scale=channels ** -0.5),
             reduce_bias=rand(reduced, scale=0.1), select_weight=rand(channels, reduced, scale=reduced ** -0.5),
             select_bias=rand(channels, scale=0.1))
    args = list(p.values())
    label = f"attention_merge {label}" + (", split" if split else "")

    def check():
        compare(label, lambda: attention_merge_fn(*args, eps=eps), lambda: attention_merge_ref(*args, eps=eps), p,
                dtype)

    if split:
        split_batch(label, check, attention_merge_triton)
    else:
        check()


def check_merge_backward_under_autocast():
    """fp32 inputs with the forward and the backward both under bf16 autocast: the gate MLP's gradients are computed
    in fp32 as without autocast (its matmuls ran in bf16 there, 1e-3 to 1e-2 off)."""
    g = torch.Generator().manual_seed(5)
    batch, num_dirs, num_tokens, channels, reduced = 2, 3, 11, 13, 3
    shapes = dict(y=(batch, num_dirs, num_tokens, channels), norm_weight=(channels,), norm_bias=(channels,),
                  reduce_weight=(reduced, channels), reduce_bias=(reduced,), select_weight=(channels, reduced),
                  select_bias=(channels,))
    p = {name: torch.randn(shape, generator=g).requires_grad_() for name, shape in shapes.items()}
    weight = torch.randn(shapes["y"][0], num_tokens, channels, generator=g)
    expected = torch.autograd.grad((attention_merge_ref(*p.values()) * weight).sum(), list(p.values()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads = torch.autograd.grad((attention_merge_fn(*p.values()) * weight).sum(), list(p.values()))
    for name, grad, grad_ref in zip(p, grads, expected):
        err = relative_error(grad, grad_ref)
        if grad.dtype != torch.float32 or not err < 2 * TOLERANCE[torch.float32]:
            sys.exit(f"attention_merge backward under autocast, grad {name}: {grad.dtype}, relative error {err:.2e}")
    print(f"ok attention_merge backward under bf16 autocast ({len(grads)} gradients in fp32)")


def check_split_batch_under_other_half_autocast():
    """fp16 tokens and weights in a bf16 autocast region (which the x projection follows, the rest computing in fp32)
    with the batch split into one kernel call per element by both ops: the outputs and gradients of the one-call
    path in that region (the split path joined its parts with a torch.cat under the autocast, which refuses fp16
    tensors in a bf16 region)."""
    p = scan_problem(("h", "w2_flip"), (3, 5), None, inner=5, state=4, width=3, gate=True, with_d=True,
                     dtype=torch.float16, seed=9)
    g = torch.Generator().manual_seed(9)
    merge = [(torch.randn(shape, generator=g) * 0.3).half().requires_grad_()
             for shape in ((5,), (5,), (2, 5), (2,), (5, 2), (5,))]
    inputs = [t for t in p.values() if t is not None and t.requires_grad] + merge
    weight = torch.randn(2, 15, 5, generator=g)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = multi_scan_attention_merge_fn(*(p[k] for k in SCAN_ARGS), gate=True, attention_weights=merge)
            return (out, *torch.autograd.grad((out.float() * weight).sum(), inputs))

    expected = run()
    with one_element_per_call(multi_scan_triton, attention_merge_triton) as counts:
        actual = run()
    if counts.count(2) != 2:     # each op's batch of 2 in two calls (and each part in one)
        sys.exit(f"split under autocast: the batches were split into {counts} calls, expected 2 for each op")
    for i, (a, e) in enumerate(zip(actual, expected)):
        err = relative_error(a, e)
        if a.dtype != e.dtype or not err < 1e-2:
            sys.exit(f"split under bf16 autocast, result {i}: {a.dtype} (expected {e.dtype}), relative error "
                     f"{err:.2e}")
    print(f"ok multi_scan_inner + attention_merge, fp16 batch split under bf16 autocast ({len(inputs)} gradients)")


def check_split_batch_sums_shared_gradients_in_fp32():
    """fp16 tokens and parameters, the batch split into one kernel call per element: the gradients of the
    parameters the kernels read (all but the x projection's weight, whose gradient each part's fp16 matmul rounds)
    and of the attention weights are the one-call path's, summed over the batch in fp32 and rounded once. Both
    elements have the same inputs and output weights w and -0.99 w, so the sum cancels to 1% of each part: the
    split path rounded each part to fp16 before summing them (several % off; beyond 65504 an inf, NaN where two
    such parts cancel)."""
    p = scan_problem(("h", "w2_flip"), (3, 5), None, inner=5, state=4, width=3, gate=True, with_d=True,
                     dtype=torch.float16, seed=10)
    p["tokens"] = p["tokens"].detach()[:1].expand(2, -1, -1).contiguous().requires_grad_()
    g = torch.Generator().manual_seed(10)
    y = torch.randn(1, 2, 15, 5, generator=g).half().expand(2, -1, -1, -1).contiguous()
    merge = [(torch.randn(shape, generator=g) * 0.3).half().requires_grad_()
             for shape in ((5,), (5,), (2, 5), (2,), (5, 2), (5,))]
    shared = [p[k] for k in ("dt_proj_weight", "dt_proj_bias", "A_log", "D", "conv_weight", "conv_bias")]
    ops = (("multi_scan_inner", multi_scan_triton, lambda: multi_scan_inner_fn(*(p[k] for k in SCAN_ARGS), gate=True),
            shared, (1, 2, 15, 5)),
           ("attention_merge", attention_merge_triton, lambda: attention_merge_fn(y, *merge), merge, (1, 15, 5)))
    for name, module, fn, params, shape in ops:
        weight = torch.randn(shape, generator=g)
        weight = torch.cat([weight, -0.99 * weight])
        expected = torch.autograd.grad((fn().float() * weight).sum(), params)
        with one_element_per_call(module):
            actual = torch.autograd.grad((fn().float() * weight).sum(), params)
        for i, (grad, grad_ref) in enumerate(zip(actual, expected)):
            err = relative_error(grad, grad_ref)
            if grad.dtype != grad_ref.dtype or not err < 2e-3:
                sys.exit(f"{name} split, fp16 shared parameter {i}: gradient {grad.dtype}, relative error {err:.2e} "
                         f"to the one-call path's")
    print("ok multi_scan_inner and attention_merge, batch split into one call per element: fp16 shared parameters' "
          "gradients")


def tensor_span(t):
    """Elements from a tensor's first to its last, as a kernel's offsets address them."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0


def check_launches_fit_the_split():
    """Every tensor a kernel of multi_scan_inner_fn reads or writes, forward and backward, conv and token-major,
    atomic and deterministic, is no larger than the per-element size its wrapper gives ``batch_slices`` (what keeps
    the kernels' 32-bit offsets in range). The per-block x_dbl gradients of the deterministic backward hold
    R + 2N columns, but were counted as 2N: a batch the split let through overflowed the offsets."""
    p = scan_problem(directions=("h", "w2_flip"), grid=(3, 5), cls_position=None, inner=9, state=2, width=3,
                     gate=True, with_d=True, dtype=torch.float32, seed=5, rank=2)
    launch = interpreter.GridExecutor.__call__
    bounds, spans = [], []

    def one_per_call(batch, item_elements, item_grid_rows=None):
        bounds.append(item_elements)
        return [slice(i, i + 1) for i in range(batch)]

    def recording_launch(executor, *args, **kwargs):
        spans.extend((tensor_span(a), executor.fn.__name__, tuple(a.shape))
                     for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        return launch(executor, *args, **kwargs)

    with mock.patch.object(multi_scan_triton, "batch_slices", one_per_call), \
            mock.patch.object(interpreter.GridExecutor, "__call__", recording_launch):
        for conv in (True, False):
            args = [p[k] for k in SCAN_ARGS]
            if not conv:
                args[-2:] = [None, None]
            for deterministic in (False, True):
                torch.use_deterministic_algorithms(deterministic)
                try:
                    multi_scan_inner_fn(*args, gate=True).sum().backward()
                finally:
                    torch.use_deterministic_algorithms(False)
                largest = max(spans)
                if largest[0] > min(bounds):
                    sys.exit(f"multi_scan_inner conv={conv} deterministic={deterministic}: {largest[1]} addresses "
                             f"a tensor {largest[2]} of {largest[0]} elements, the split allows {min(bounds)}")
                bounds.clear()
                spans.clear()
    print("ok multi_scan_inner: every kernel's tensors fit the batch split (conv, token-major, deterministic)")


def check_custom_ops():
    """Schema, autograd registration, fake (meta) implementations and AOT dispatch of the custom ops, as
    ``torch.compile`` needs them (``torch.library.opcheck``; it runs backward through the fakes too)."""
    g = torch.Generator().manual_seed(5)
    index = sequence_index(("h", "w2_flip"), (2, 3)).to(torch.int32)     # the smallest: opcheck runs each op often
    batch, num_tokens, inner, state, rank, num_dirs, length = 2, 6, 5, 4, 2, 2, index.shape[1]

    def rand(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    tokens, weights = rand(batch, num_tokens, 2 * inner), rand(num_dirs, inner, 1, 4)
    per_dir = [rand(num_dirs, inner) for _ in range(3)]
    calls = [(multi_scan_triton.multi_scan_conv_fwd, (tokens, index, weights, per_dir[0], inner)),
             (multi_scan_triton.multi_scan_scan_fwd,
              (rand(batch, num_dirs, length, inner), rand(batch, num_dirs, length, rank + 2 * state), tokens, index,
               rand(num_dirs, inner, state), per_dir[1], rand(num_dirs, inner, rank), per_dir[2], True, False, 4)),
             (multi_scan_triton.multi_scan_scan_fwd,      # token-major: u is the tokens, x_dbl at token rows
              (tokens, rand(batch, num_tokens, num_dirs, rank + 2 * state), tokens, index,
               rand(num_dirs, inner, state), per_dir[1], rand(num_dirs, inner, rank), per_dir[2], True, True, 4)),
             (attention_merge_triton.attention_merge_triton_fwd,
              (rand(batch, num_dirs, num_tokens, inner), rand(inner), rand(inner), rand(2, inner), rand(2),
               rand(inner, 2), rand(inner), 1e-5))]
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for op, args in calls:
        results = torch.library.opcheck(op, args, test_utils=tests)
        if set(results.values()) != {"SUCCESS"}:
            sys.exit(f"opcheck {op}: {results}")
    print(f"ok torch.library.opcheck of {len(calls)} custom op calls")


def check_compiled():
    """``torch.compile`` of multi_scan_inner_fn on the triton backend (the custom ops opaque in the graph): the
    same output and gradients as eager, with a conv and token-major."""
    for width in (4, 0):
        p = scan_problem(("h", "w2_flip"), (2, 3), None, inner=6, state=4, width=width, gate=True, with_d=True,
                         dtype=torch.float32, seed=6, rank=3)
        args = [p[k] for k in SCAN_ARGS]
        inputs = [p["tokens"], p["x_proj_weight"], p["dt_proj_weight"], p["A_log"]]

        def scan(*a):
            return multi_scan_inner_fn(*a, gate=True)

        eager = scan(*args)
        grads = torch.autograd.grad(eager.square().sum(), inputs)
        compiled = torch.compile(scan)(*args)
        grads_compiled = torch.autograd.grad(compiled.square().sum(), inputs)
        for name, actual, expected in zip(("output", "tokens", "x_proj_weight", "dt_proj_weight", "A_log"),
                                          (compiled, *grads_compiled), (eager, *grads)):
            err = relative_error(actual, expected)
            if not err < 1e-6:
                sys.exit(f"torch.compile, conv width {width}: {name} relative error {err:.2e}")
    print("ok torch.compile of the triton multi_scan_inner_fn (conv and token-major) matches eager")


def main():
    assert os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("LOCALMAMBA_BACKEND") == "triton"
    for op in ("multi_scan_inner", "attention_merge"):
        assert backends.selected_backend(op, "cpu") == "triton", op
    use_fast_interpreter()
    check_split_batch_under_other_half_autocast()       # these four are about the wrappers: at the default tiles
    check_split_batch_sums_shared_gradients_in_fp32()
    check_custom_ops()
    check_compiled()
    check_launches_fit_the_split()
    shrink_tiles()
    # the deterministic backward and the batch split on two of each case's four directions (a windowed one among
    # them): the same kernel paths, at half the interpreted programs
    four = ("h", "v_flip", "w2", "w3_flip")
    for deterministic, split in ((False, False), (True, False), (False, True)):
        directions = ("v_flip", "w3_flip") if deterministic or split else four
        check_scan(f"K={len(directions)} 3x5 middle class token, gate, conv W=4, fp32", directions=directions,
                   grid=(3, 5), cls_position=8, inner=5, state=4, width=4, with_d=True, seed=0,
                   deterministic=deterministic, split=split)
    check_scan("K=2 windowed, no gate, no conv, no D, N=3, dt rank 18, fp32", gate=False,
               directions=("h_flip", "w2_flip"), grid=(3, 5), cls_position=None, inner=7, state=3, width=0,
               with_d=False, seed=1, rank=18)
    for deterministic, split in ((False, False), (True, False), (False, True)):
        directions = ("w3", "h") if deterministic or split else ("v_flip", "w3", "h", "w2")
        check_scan(f"K={len(directions)} 3x5 no conv (token-major), gate, D, dt rank 3, fp32", directions=directions,
                   grid=(3, 5), cls_position=None, inner=6, state=4, width=0, with_d=True, seed=3, rank=3,
                   deterministic=deterministic, split=split)
    check_scan("K=2 no conv (token-major), middle class token, gate, bf16", dtype=torch.bfloat16,
               directions=("w2", "v"), grid=(3, 5), cls_position=8, inner=5, state=4, width=0, with_d=True, seed=4)
    check_scan("K=3 3x5, gate, conv W=3, bf16", dtype=torch.bfloat16, directions=("v", "w3", "h_flip"), grid=(3, 5),
               cls_position=None, inner=5, state=4, width=3, with_d=True, seed=2)
    check_scan_dt_extremes()
    check_merge("B=2 K=3 T=11 E=13, fp32", 2, 3, 11, 13, torch.float32)
    check_merge("B=2 K=3 T=11 E=13, fp32", 2, 3, 11, 13, torch.float32, split=True)
    check_merge("B=2 K=2 T=9 E=10, bf16", 2, 2, 9, 10, torch.bfloat16)
    check_merge("B=1 K=2 T=6 E=5, eps 0.5, fp32", 1, 2, 6, 5, torch.float32, eps=0.5)
    check_merge_backward_under_autocast()
    check_second_derivatives_refused(('multi_scan_inner conv', 'multi_scan_inner token-major', 'attention_merge',
                                      'multi_scan_attention_merge'))


if __name__ == "__main__":
    main()
