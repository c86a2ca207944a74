"""Randomised differential fuzz of the Triton or the cpu (C kernel) backend of every public op against its reference.
It runs for minutes: the suite runs ten cases of each backend (test_triton_fuzz.py, test_cpu_fuzz.py), and keeps the
defects it found as tiny deterministic cases in triton_interpreter_checks.py / triton_multi_scan_checks.py and the
test_cpu_*.py files.

Run: ``python tests/kernels/kernel_fuzz_checks.py [--backend triton|cpu] [--isa baseline|avx2|avx512|off] [--budget
SECONDS] [--seed S] [--shard I/N] [--ops a,b] [--autocast SHARE] [--log FILE]``. The triton backend runs on CPU under
the Triton interpreter (TRITON_INTERPRET=1 is set here, before triton is imported); the cpu backend needs no triton,
runs its C kernels built for ``--isa`` (``off``: their PyTorch fallback) and draws a thread count per case (1 to 3,
so that the kernels' work splits unevenly). Each case draws shapes (odd sizes, lengths off the tile and vector sizes,
batch 1, N = 1), optional arguments, dtypes (mixed where the contract accepts them; fp64 where the cpu backend takes
it) and a memory layout per input (contiguous, transposed, every-other-element slices, a batch expanded with stride
0, all dims permuted), runs the op on the backend and on the reference with the same tensors, and compares the
outputs and the gradient of every input (after the views: the gradient reaches the leaf the view was taken of), and
the outputs of a second call without autograd. It also flags NaN / inf where the reference is finite (and finite
values where it overflows; NaN and inf count as one, their choice follows the order of the sums), dtype / shape /
gradient-presence differences, crashes and inputs modified in place. One JSON line per case goes to the log; a
summary of the failures is printed at the end.

Autocast: a share of the cases (``--autocast``, 0.15 by default) runs the op under a bf16 or fp16 CPU autocast
region, forward and backward, for every op whose contract covers it. What the contract says decides the reference:
the scan, the conv and the attention merge compute in fp32 under autocast and return their input's dtype, so they
are compared with the reference outside autocast at the usual tolerance; ``mamba_inner_fn_no_out_proj`` runs its
projections as plain ops under the ambient autocast, and so does the Triton ``multi_scan_inner``'s x projection
(tensor cores on a GPU), so their reference runs in the same autocast region and the tolerance is that of the
autocast dtype (the projections' rounding differs with the order of the sums). The cpu ``multi_scan_inner``
computes all in fp32 under autocast: the plain reference. Under autocast the weights that multiply the activations
are sometimes fp32 or of the autocast dtype (as in mixed-precision training, which only autocast accepts); a
reference of plain ops outside autocast takes them in the activations' dtype.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import traceback
from typing import Optional

import torch
from batch_splitting import one_element_per_call

from localmamba_conv1d import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref
from localmamba_kernel_runtime import backends, ckernel
from localmamba_ssm import (attention_merge_fn, attention_merge_ref, mamba_inner_fn_no_out_proj,
                            mamba_inner_no_out_proj_ref, multi_scan_attention_merge_fn, multi_scan_inner_fn,
                            multi_scan_inner_ref, selective_scan_fn, selective_scan_ref)

F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
DTYPE_NAME = {F32: "fp32", BF16: "bf16", F16: "fp16", F64: "fp64"}
# relative error (max |a - b| / max |b|) allowed for outputs; gradients get twice as much
TOL = {F32: 2e-4, F16: 1e-2, BF16: 4e-2}
LAYOUTS = ("contig", "transposed", "sliced", "expanded", "permuted", "swap01")


GOLD = {"on": False}   # build every input in fp64 (from the values of its dtype): the fp64 reference
RUN = {"backend": "triton", "autocast": 0.15}   # the backend under test, the share of autocast cases (main() sets them)
AUTOCAST_DTYPES = {"bf16": BF16, "fp16": F16}


# --- inputs in a memory layout ------------------------------------------------------------------------------------

class Inputs:
    """Leaves (what gradients are compared on) and the views the op gets, by name."""

    def __init__(self, g: torch.Generator):
        self.g = g
        self.leaves = {}
        self.views = {}
        self.layouts = {}

    def add(self, name, shape, dtype, layout="contig", scale=1.0, shift=0.0, grad=True, fn=None):
        """A random tensor of ``shape`` in ``layout``; ``fn`` maps the fp64 values first (e.g. abs)."""
        shape = tuple(shape)
        if layout == "transposed" and len(shape) < 2:
            layout = "contig"
        if layout == "expanded" and (len(shape) < 1 or shape[0] < 2):
            layout = "contig"
        if layout in ("permuted", "swap01") and len(shape) < 2:
            layout = "contig"
        if layout == "contig":
            store = shape
        elif layout == "transposed":
            store = shape[:-2] + (shape[-1], shape[-2])
        elif layout == "sliced":
            store = shape[:-1] + (2 * shape[-1] + 1,) if shape else shape
        elif layout == "expanded":
            store = (1,) + shape[1:]
        elif layout == "swap01":
            store = (shape[1], shape[0]) + shape[2:]
        else:
            store = tuple(reversed(shape))
        values = torch.randn(store, generator=self.g, dtype=F64)
        if fn is not None:
            values = fn(values)
        leaf = (values * scale + shift).to(dtype)
        if GOLD["on"]:      # the same rounded values, in fp64
            leaf = leaf.to(F64)
        leaf.requires_grad_(grad)
        if layout == "contig":
            view = leaf
        elif layout == "transposed":
            view = leaf.transpose(-1, -2)
        elif layout == "sliced":
            view = leaf[..., 1::2] if shape else leaf
        elif layout == "expanded":
            view = leaf.expand(shape)
        elif layout == "swap01":
            view = leaf.transpose(0, 1)
        else:
            view = leaf.permute(*reversed(range(len(shape))))
        assert tuple(view.shape) == shape, (name, layout, view.shape, shape)
        self.leaves[name], self.views[name], self.layouts[name] = leaf, view, layout
        return view

    def none(self, name):
        self.views[name] = None
        return None

    def grad_leaves(self):
        return {k: t for k, t in self.leaves.items() if t.requires_grad}

    def snapshot(self):
        return {k: t.detach().clone() for k, t in self.leaves.items()}


def rel_err(actual, expected):
    a, e = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(e)
    if not finite.any():
        return 0.0
    scale = e[finite].abs().max().clamp_min(1e-4)  # an analytically zero gradient is rounding noise
    return ((a[finite] - e[finite]).abs().max() / scale).item()


def compare_tensors(label, actual, expected, problems):
    """Structural differences (shape, dtype, places of NaN / inf) into ``problems``; the relative error of the
    finite values, or None."""
    if actual.shape != expected.shape:
        problems.append(f"{label}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
        return None
    if actual.dtype != expected.dtype:
        problems.append(f"{label}: dtype {actual.dtype} != {expected.dtype}")
    if actual.numel() == 0:
        return None
    a, e = actual.detach().double(), expected.detach().double()
    # where both overflow, NaN or inf depends on the order of the sums (inf - inf): only finiteness must agree
    if not torch.equal(torch.isfinite(a), torch.isfinite(e)):
        problems.append(f"{label}: NaN / inf at {int((~torch.isfinite(a)).sum())} places, reference at "
                        f"{int((~torch.isfinite(e)).sum())} (NaN {int(torch.isnan(a).sum())}, reference "
                        f"{int(torch.isnan(e).sum())})")
    both = torch.isfinite(a) & torch.isfinite(e)
    return rel_err(a[both], e[both]) if both.any() else None


def forward_backward(f, leaves, weights_of, context=contextlib.nullcontext):
    """Outputs of ``f`` and the gradients of ``leaves`` (dict) of sum(out_i * weight_i): {label: tensor}, and the
    weights used (drawn from the outputs' shapes on the first call)."""
    with context():
        outs = f()
        outs = outs if isinstance(outs, tuple) else (outs,)
        weights = weights_of(outs)
        results = {f"out{i}": o.detach() for i, o in enumerate(outs)}
        diff = [i for i, o in enumerate(outs) if o.requires_grad]
        names = list(leaves)
        if names and diff:
            loss = sum((outs[i].double() * weights[i]).sum() for i in diff)
            grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
            results.update({f"grad {k}": g for k, g in zip(names, grads)})
    return results


def forward_only(f, context, inference_mode=False):
    """Outputs of ``f`` called without autograd (the ops' inference paths), under ``torch.no_grad`` or
    ``torch.inference_mode``: {label: tensor}."""
    with context(), (torch.inference_mode() if inference_mode else torch.no_grad()):
        outs = f()
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {f"out{i} no_grad": o for i, o in enumerate(outs)}


def differential(fn, ref, inputs: Inputs, tol, seed=0, context=contextlib.nullcontext, gold=None):
    """Run ``fn`` (the backend under test; forward and backward inside ``context()``, then the forward alone without
    autograd) and ``ref`` on the same views; compare outputs and gradients (gradients at twice ``tol``); check the
    leaves were not modified. A value off by more than the tolerance is judged again against ``gold(weights_of)``
    (the reference in fp64 on the same rounded values): it passes if the backend's error there is within the
    tolerance or twice the reference's own. -> (problems, errors)."""
    backend = RUN["backend"]
    problems, errors = [], {}
    before = inputs.snapshot()
    leaves = inputs.grad_leaves()
    drawn = []

    def weights_of(outs):
        if not drawn:   # rounded to the backend's output dtypes: the fp64 reference gets the same output gradients
            g = torch.Generator().manual_seed(seed + 1)
            drawn.extend(torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype).to(F64) for o in outs)
        return drawn

    tri = forward_backward(fn, leaves, weights_of, context)
    tri.update(forward_only(fn, context, inference_mode=seed % 2 == 1))
    after = inputs.snapshot()
    refd = forward_backward(ref, leaves, weights_of)
    refd.update({f"{k} no_grad": v for k, v in refd.items() if k.startswith("out")})
    if set(tri) != set(refd):
        problems.append(f"results {sorted(tri)}, reference {sorted(refd)}")
    numeric = {}
    for label in sorted(set(tri) & set(refd)):
        a, e = tri[label], refd[label]
        if (a is None) != (e is None):
            other = a if a is not None else e     # an unused input: None on one side, zeros on the other is fine
            if other.abs().max().item() != 0:
                problems.append(f"{label}: presence differs ({backend} {a is not None}, reference {e is not None})")
            continue
        if a is None:
            continue
        err = compare_tensors(label, a, e, problems)
        if err is None:
            continue
        errors[label] = err
        limit = tol * (2 if label.startswith("grad") else 1)
        if not err < limit:
            numeric[label] = limit
    if numeric and gold is not None:
        golden = gold(weights_of)
        for label, limit in list(numeric.items()):
            g = golden.get(label.replace(" no_grad", ""))
            if g is None:
                continue
            err_tri = rel_err(tri[label], g)
            err_ref = rel_err(refd[label], g)
            errors[f"{label} vs fp64"] = err_tri
            errors[f"{label} ref vs fp64"] = err_ref
            if err_tri < max(limit, 2 * err_ref):
                del numeric[label]
    for label, limit in numeric.items():
        problems.append(f"{label}: relative error {errors[label]:.2e} >= {limit:.1e}"
                        + (f" (fp64: {backend} {errors[label + ' vs fp64']:.2e}, reference "
                           f"{errors[label + ' ref vs fp64']:.2e})" if label + " vs fp64" in errors else ""))
    for k, t in before.items():
        if not torch.equal(torch.nan_to_num(t, nan=1234.5), torch.nan_to_num(after[k], nan=1234.5)):
            problems.append(f"input {k} modified in place by the {backend} op")
    return problems, errors


@contextlib.contextmanager
def patched(module, **values):
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


@contextlib.contextmanager
def deterministic(on):
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def split(p, module):
    """``p["split"]``: the wrapper of ``module`` runs the batch as one kernel call per element (the path of a batch
    too large for one call)."""
    return one_element_per_call(module) if p["split"] else contextlib.nullcontext()


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def backend_context(rng, p, triton_patches=lambda: (), autocast=True):
    """The context a case runs its op in: the backend under test forced; for triton also the contexts
    ``triton_patches()`` returns (tile sizes, batch splitting; called inside, so triton is imported only then), for
    cpu a thread count drawn here (``p["threads"]``); and, where ``autocast`` (an op whose contract covers autocast),
    sometimes an autocast region (``p["autocast"]``, see :func:`draw_autocast`)."""
    if RUN["backend"] == "cpu":
        p["threads"] = pick(rng, [1, 2, 2, 3])
    if "autocast" not in p:
        draw_autocast(rng, p, autocast)

    @contextlib.contextmanager
    def context():
        with contextlib.ExitStack() as stack:
            if RUN["backend"] == "cpu":
                stack.enter_context(num_threads(p["threads"]))
            else:
                for patch in triton_patches():
                    stack.enter_context(patch)
            stack.enter_context(autocast_region(p))
            stack.enter_context(backends.forced_backend(RUN["backend"]))
            yield

    return context


def draw_autocast(rng, p, autocast=True, dtype=None):
    """``p["autocast"]``: for a share of the cases the name of a bf16 or fp16 autocast region, else None (a case
    that needs it before :func:`backend_context` draws it first). ``dtype``: the activations' dtype of an op whose
    plain ops run in the region, which then must be the half type of half activations (torch's autocast refuses fp16
    tensors in a bf16 region and the reverse, e.g. in the backward of a split: for the reference too)."""
    p["autocast"] = None
    if autocast and rng.random() < RUN["autocast"]:
        p["autocast"] = DTYPE_NAME[dtype] if dtype in (BF16, F16) else pick(rng, ["bf16", "bf16", "fp16"])


def weight_dtype(rng, p, dtype):
    """The dtype of the weights that multiply the activations (projections, conv, norm): the activations' own, or
    under autocast (where the contract accepts others, as in mixed-precision training) sometimes fp32 or the
    autocast dtype."""
    if not p["autocast"]:
        return dtype
    return pick(rng, [dtype, F32, F32, AUTOCAST_DTYPES[p["autocast"]]])


def cast_all(tensors, dtype):
    """``tensors`` (None kept) in ``dtype``: mixed-dtype weights for a reference of plain ops that needs one dtype."""
    return [None if t is None else t.to(dtype) for t in tensors]


def autocast_region(p):
    """The autocast region ``p["autocast"]`` names (the inputs are CPU tensors on both backends), or none."""
    if not p.get("autocast"):
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=AUTOCAST_DTYPES[p["autocast"]])


def ambient_tolerance(p, tol, *dtypes):
    """The tolerance of an op whose projections follow the ambient autocast: as if its activations were of the
    autocast dtype (the doubled one of low-precision activations), else ``tol``."""
    if not p.get("autocast"):
        return tol
    return max(tol, 2 * tol_of(AUTOCAST_DTYPES[p["autocast"]], *dtypes))


def on_cpu():
    return RUN["backend"] == "cpu"


def triton_module(name):
    """A module of ``localmamba_ssm.ops.triton`` (imports triton)."""
    import importlib

    return importlib.import_module(f"localmamba_ssm.ops.triton.{name}")


def pick(rng, seq):
    return seq[rng.randrange(len(seq))]


def tol_of(*dtypes):
    return max(TOL[d] if d in TOL else TOL[F32] for d in dtypes)


# --- ops ---------------------------------------------------------------------------------------------------------

def case_selective_scan(rng, g):
    batch = pick(rng, [1, 1, 2, 3])
    dim = pick(rng, [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 17, 24, 48] + ([33, 65] if on_cpu() else []))
    seqlen = pick(rng, [1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 70] + ([9, 64, 65, 130] if on_cpu() else []))
    dstate = pick(rng, [1, 1, 2, 3, 4, 5, 7, 8, 16, 17, 33] + ([15, 32, 48, 257] if on_cpu() else []))
    dtype = pick(rng, [F32, F32, BF16, F16] + ([F32, F64] if on_cpu() else []))
    mixed = rng.random() < 0.3

    def dt_of(base):
        return pick(rng, [F32, BF16, F16, F64]) if mixed else base

    def bc_kind():
        kind = pick(rng, ["const", "var3", "var4"])
        groups = 1
        if kind == "var4":
            groups = pick(rng, [d for d in range(1, dim + 1) if dim % d == 0])
        return kind, groups

    softplus = rng.random() < 0.6
    p = dict(batch=batch, dim=dim, seqlen=seqlen, dstate=dstate, dtype=DTYPE_NAME[dtype], mixed=mixed,
             softplus=softplus, D=rng.random() < 0.6, z=rng.random() < 0.6, delta_bias=rng.random() < 0.6,
             last=rng.random() < 0.5, B=bc_kind(), C=bc_kind(),
             chunk=pick(rng, [16, 16, 4, 8]), max_block_d=pick(rng, [8, 8, 2, 4]),
             deterministic=rng.random() < 0.25, positive_A=rng.random() < 0.1)
    inp = Inputs(g)
    lay = {k: pick(rng, LAYOUTS) for k in "u delta z A B C D bias".split()}
    p["layouts"] = lay
    dtypes = {"u": dtype, "delta": dt_of(dtype), "z": dt_of(dtype), "A": pick(rng, [F32, F32, BF16, F64]) if mixed
              else F32, "B": dt_of(dtype), "C": dt_of(dtype), "D": dt_of(F32), "bias": dt_of(F32)}
    p["dtypes"] = {k: DTYPE_NAME[v] for k, v in dtypes.items()}
    u = inp.add("u", (batch, dim, seqlen), dtypes["u"], lay["u"])
    p["delta_shift"] = pick(rng, [0.0] * 6 + [-12.0, -7.0, 22.0]) if softplus else 0.0
    delta = inp.add("delta", (batch, dim, seqlen), dtypes["delta"], lay["delta"], scale=0.5, shift=p["delta_shift"],
                    fn=None if softplus else torch.abs)
    p["mamba_A"] = rng.random() < 0.2
    if p["positive_A"] and not p["delta_shift"]:   # (e^{22 A} overflows: inf and NaN by the order of the sums)
        A = inp.add("A", (dim, dstate), dtypes["A"], lay["A"], scale=0.3 * min(1.0, 8 / seqlen))   # (growth too)
    elif p["mamba_A"]:    # about Mamba's initialisation, -1 .. -N
        A = inp.add("A", (dim, dstate), dtypes["A"], lay["A"], scale=0.01,
                    fn=lambda v: v - 100 * (torch.arange(1, v.shape[0] + 1, dtype=F64)[:, None]
                                            if lay["A"] in ("transposed", "permuted", "swap01")
                                            else torch.arange(1, v.shape[-1] + 1, dtype=F64)))
    else:
        A = inp.add("A", (dim, dstate), dtypes["A"], lay["A"], fn=lambda v: -(v.abs() + 0.1))

    def bc(name, kind):
        k, groups = kind
        if k == "const":
            return inp.add(name, (dim, dstate), F32 if not mixed else dtypes[name], lay[name])
        if k == "var3":
            return inp.add(name, (batch, dstate, seqlen), dtypes[name], lay[name])
        return inp.add(name, (batch, groups, dstate, seqlen), dtypes[name], lay[name])

    B, C = bc("B", p["B"]), bc("C", p["C"])
    D = inp.add("D", (dim,), dtypes["D"], lay["D"]) if p["D"] else None
    z = inp.add("z", (batch, dim, seqlen), dtypes["z"], lay["z"]) if p["z"] else None
    bias = (inp.add("bias", (dim,), dtypes["bias"], lay["bias"], scale=0.5, fn=None if softplus else torch.abs)
            if p["delta_bias"] else None)   # (without softplus a negative dt grows the state until it overflows)

    def call(f):
        return lambda: f(u, delta, A, B, C, D, z, bias, softplus, p["last"])

    p["split"] = rng.random() < 0.15

    def triton_patches():
        module = triton_module("selective_scan_triton")
        return (patched(module, CHUNK=p["chunk"], MAX_BLOCK_D=p["max_block_d"]), deterministic(p["deterministic"]),
                split(p, module))

    context = backend_context(rng, p, triton_patches)

    tol = tol_of(*dtypes.values()) * (4 if seqlen > 16 and dtype != F32 else 1)
    return p, inp, call(selective_scan_fn), call(selective_scan_ref), tol, context


def case_mamba_inner(rng, g):
    batch = pick(rng, [1, 2])
    inner = pick(rng, [1, 2, 3, 4, 5, 7, 8, 9])
    seqlen = pick(rng, [1, 2, 3, 7, 16, 17, 33])
    dstate = pick(rng, [1, 2, 3, 4, 7])
    rank = pick(rng, [1, 2, 3, 5])
    width = pick(rng, [1, 2, 3, 4, 5])
    dtype = pick(rng, [F32, F32, BF16, F16])
    p = dict(batch=batch, inner=inner, seqlen=seqlen, dstate=dstate, rank=rank, width=width, dtype=DTYPE_NAME[dtype],
             conv_bias=rng.random() < 0.7, w3=rng.random() < 0.5, D=rng.random() < 0.7,
             delta_bias=rng.random() < 0.7, B_given=pick(rng, [None, None, "const", "var4"]),
             C_given=pick(rng, [None, None, "const", "var3"]), B_proj_bias=rng.random() < 0.3,
             C_proj_bias=rng.random() < 0.3, softplus=rng.random() < 0.8,
             xz_layout=pick(rng, ["contig", "transposed", "sliced", "expanded"]))
    if p["B_given"] is not None:
        p["B_proj_bias"] = False
    if p["C_given"] is not None:
        p["C_proj_bias"] = False
    draw_autocast(rng, p, dtype=dtype)
    wdtype = weight_dtype(rng, p, dtype)
    p["weight_dtype"] = DTYPE_NAME[wdtype]
    inp = Inputs(g)
    xz = inp.add("xz", (batch, 2 * inner, seqlen), dtype, p["xz_layout"])
    cw = inp.add("conv_weight", (inner, 1, width) if p["w3"] else (inner, width), wdtype, scale=0.5)
    cb = inp.add("conv_bias", (inner,), wdtype, scale=0.1) if p["conv_bias"] else None
    rows = rank + dstate * ((p["B_given"] is None) + (p["C_given"] is None))
    xpw = inp.add("x_proj_weight", (rows, inner), wdtype, scale=inner ** -0.5)
    dpw = inp.add("delta_proj_weight", (inner, rank), wdtype, scale=rank ** -0.5)
    A = inp.add("A", (inner, dstate), F32, fn=lambda v: -(v.abs() + 0.1))
    B = C = None
    if p["B_given"] == "const":
        B = inp.add("B", (inner, dstate), F32)
    elif p["B_given"] == "var4":
        B = inp.add("B", (batch, 1, dstate, seqlen), dtype)
    if p["C_given"] == "const":
        C = inp.add("C", (inner, dstate), F32)
    elif p["C_given"] == "var3":
        C = inp.add("C", (batch, dstate, seqlen), dtype)
    D = inp.add("D", (inner,), F32) if p["D"] else None
    p["bias_shift"] = pick(rng, [0.0] * 4 + [-12.0, -7.0, 22.0]) if p["softplus"] else 0.0   # (else dt < 0: growth)
    db = inp.add("delta_bias", (inner,), F32, scale=0.5, shift=p["bias_shift"]) if p["delta_bias"] else None
    bpb = inp.add("B_proj_bias", (dstate,), dtype) if p["B_proj_bias"] else None
    cpb = inp.add("C_proj_bias", (dstate,), dtype) if p["C_proj_bias"] else None

    def fn():
        return mamba_inner_fn_no_out_proj(xz, cw, cb, xpw, dpw, A, B, C, D, db, bpb, cpb, p["softplus"])

    def ref():   # the projections are plain ops, under the same autocast as the backend's
        with autocast_region(p):
            return mamba_inner_no_out_proj_ref(xz, cw, cb, xpw, dpw, A, B, C, D, db, bpb, cpb, p["softplus"])

    context = backend_context(rng, p)
    return p, inp, fn, ref, ambient_tolerance(p, tol_of(dtype) * (2 if dtype != F32 else 1), dtype), context


def case_conv(rng, g):
    batch = pick(rng, [1, 1, 2, 3])
    dim = pick(rng, [1, 2, 3, 5, 7, 16, 17, 33] + ([40, 65] if on_cpu() else []))
    seqlen = pick(rng, [1, 2, 3, 4, 7, 17, 63, 64, 65, 130])
    width = pick(rng, [1, 2, 3, 4, 5, 7, 9, 16])
    dtype = pick(rng, [F32, F32, BF16, F16] + ([F64] if on_cpu() else []))
    mixed = rng.random() < 0.3
    wdtype = pick(rng, [F32, BF16, F16] + ([F64] if on_cpu() else [])) if mixed else dtype
    bdtype = pick(rng, [F32, BF16, F16, F64]) if mixed else wdtype
    p = dict(batch=batch, dim=dim, seqlen=seqlen, width=width, dtype=DTYPE_NAME[dtype], wdtype=DTYPE_NAME[wdtype],
             bdtype=DTYPE_NAME[bdtype], bias=rng.random() < 0.6, w3=rng.random() < 0.3,
             activation=pick(rng, [None, "silu", "swish"]), layouts={k: pick(rng, LAYOUTS) for k in ("x", "w", "b")},
             block_d=pick(rng, [16, 16, 4]), block_t=pick(rng, [64, 64, 8]))
    inp = Inputs(g)
    x = inp.add("x", (batch, dim, seqlen), dtype, p["layouts"]["x"])
    w = inp.add("weight", (dim, 1, width) if p["w3"] else (dim, width), wdtype, p["layouts"]["w"], scale=0.5)
    b = inp.add("bias", (dim,), bdtype, p["layouts"]["b"]) if p["bias"] else None

    def call(f):
        return lambda: f(x, w, b, p["activation"])

    def ref():
        return causal_conv1d_ref(x, w[:, 0] if p["w3"] else w, b, p["activation"])

    p["split"] = rng.random() < 0.15

    def triton_patches():
        from localmamba_conv1d import triton_conv1d

        return patched(triton_conv1d, BLOCK_D=p["block_d"], BLOCK_T=p["block_t"]), split(p, triton_conv1d)

    context = backend_context(rng, p, triton_patches)
    return p, inp, call(causal_conv1d_fn), ref, tol_of(dtype, wdtype), context


def case_conv_update(rng, g):
    """No triton or cpu backend: the forced choice must still give the reference's result and state."""
    batch, dim, width = pick(rng, [1, 2]), pick(rng, [1, 3, 8]), pick(rng, [2, 3, 4])
    dtype = pick(rng, [F32, BF16])
    p = dict(batch=batch, dim=dim, width=width, dtype=DTYPE_NAME[dtype], bias=rng.random() < 0.5,
             activation=pick(rng, [None, "silu"]))
    inp = Inputs(g)
    x = inp.add("x", (batch, dim), dtype, grad=False)
    w = inp.add("weight", (dim, width), dtype, grad=False)
    b = inp.add("bias", (dim,), dtype, grad=False) if p["bias"] else None
    state0 = torch.randn(batch, dim, width, generator=g).to(dtype)
    states = {}

    def fn():
        states["backend"] = state0.clone()
        return causal_conv1d_update(x, states["backend"], w, b, p["activation"]), states["backend"]

    def ref():
        states["ref"] = state0.clone()
        return causal_conv1d_update_ref(x, states["ref"], w, b, p["activation"]), states["ref"]

    return p, inp, fn, ref, tol_of(dtype), backend_context(rng, p, autocast=False)


def random_index(rng, num_dirs, num_tokens, pad_max):
    """(K, L) int64: each row a random order of the T tokens with padding (value T) inserted at random places."""
    length = num_tokens + rng.randrange(pad_max + 1)
    rows = []
    for _ in range(num_dirs):
        order = list(range(num_tokens))
        rng.shuffle(order)
        for _ in range(length - num_tokens):
            order.insert(rng.randrange(len(order) + 1), num_tokens)
        rows.append(order)
    return torch.tensor(rows, dtype=torch.long)


def multi_scan_problem(rng, g, p, dtype):
    inp = Inputs(g)
    K, T, E, N, R, W = p["K"], p["T"], p["E"], p["N"], p["R"], p["W"]
    p["index"] = random_index(rng, K, T, p["pad"]).tolist()
    index = torch.tensor(p["index"])
    channels = (2 * E if p["gate"] else E) + p["extra_channels"]
    pdt, wdt = p["param_dtype"], p["weight_dtype"]
    tokens = inp.add("tokens", (p["batch"], T, channels), dtype, p["tokens_layout"])
    xpw = inp.add("x_proj_weight", (K, R + 2 * N, E), wdt, scale=E ** -0.5)
    dtw = inp.add("dt_proj_weight", (K, E, R), wdt, scale=R ** -0.5)
    dtb = inp.add("dt_proj_bias", (K, E), pdt, scale=0.5, shift=p["bias_shift"], layout=pick(rng, LAYOUTS))
    alog = inp.add("A_log", (K, E, N), pdt, scale=0.5, layout=pick(rng, LAYOUTS))
    D = inp.add("D", (K, E), pdt, layout=pick(rng, LAYOUTS)) if p["D"] else None
    cw = cb = None
    if W:
        cw = inp.add("conv_weight", (K, E, 1, W) if p["w4"] else (K, E, W), wdt, scale=0.5,
                     layout=pick(rng, LAYOUTS))
        cb = inp.add("conv_bias", (K, E), wdt, scale=0.1) if p["conv_bias"] else None
    return inp, (tokens, index, xpw, dtw, dtb, alog, D, cw, cb, p["gate"])


def multi_scan_params(rng):
    dtype = pick(rng, [F32, F32, BF16, F16])
    p = dict(
        batch=pick(rng, [1, 1, 2, 3]), K=pick(rng, [1, 2, 3, 4]),
        T=pick(rng, [1, 2, 3, 5, 7, 11, 17, 20] + ([16, 33, 40] if on_cpu() else [])),
        pad=pick(rng, [0, 0, 1, 3, 8]), E=pick(rng, [1, 2, 3, 5, 8, 9, 17] + ([16, 31, 33] if on_cpu() else [])),
        N=pick(rng, [1, 2, 3, 4, 7, 16, 17] + ([8, 9, 24] if on_cpu() else [])),
        R=pick(rng, [1, 2, 3, 5, 18, 33]), W=pick(rng, [0, 0, 1, 2, 3, 4]), w4=rng.random() < 0.5,
        bias_shift=pick(rng, [0.0] * 5 + [-12.0, -7.0, 22.0]),
        conv_bias=rng.random() < 0.7, gate=rng.random() < 0.7, D=rng.random() < 0.7,
        extra_channels=pick(rng, [0, 0, 1, 3]), dtype=DTYPE_NAME[dtype],
        tokens_layout=pick(rng, LAYOUTS),
        param_dtype=pick(rng, [dtype, F32, F32, BF16, F64]), deterministic=rng.random() < 0.3,
        tiles=pick(rng, [(16, 8, 32, 32), (16, 8, 32, 32), (4, 4, 8, 4), (8, 2, 4, 8), (2, 8, 2, 2)]))
    draw_autocast(rng, p)
    p["weight_dtype"] = weight_dtype(rng, p, dtype)
    return dtype, p


def multi_scan_reference(args):
    """``multi_scan_inner_ref`` on ``args`` with the weights that multiply the tokens in the tokens' dtype."""
    tokens, index, xpw, dtw, dtb, alog, D, cw, cb, gate = args
    xpw, dtw, cw, cb = cast_all((xpw, dtw, cw, cb), tokens.dtype)
    return multi_scan_inner_ref(tokens, index, xpw, dtw, dtb, alog, D, cw, cb, gate=gate)


def projection_autocast(p):
    """The autocast region of the reference ``multi_scan_inner``: the backend's, on triton (whose x projection runs
    under the ambient autocast), none on cpu (which computes all in fp32 under autocast)."""
    return contextlib.nullcontext() if on_cpu() else autocast_region(p)


def multi_scan_tolerance(p, dtype):
    tol = tol_of(dtype) * (2 if dtype != F32 else 1)
    return tol if on_cpu() else ambient_tolerance(p, tol, dtype)


def case_multi_scan(rng, g):
    dtype, p = multi_scan_params(rng)
    inp, args = multi_scan_problem(rng, g, p, dtype)
    p["param_dtype"], p["weight_dtype"] = DTYPE_NAME[p["param_dtype"]], DTYPE_NAME[p["weight_dtype"]]
    chunk, block_d, conv_chunk, conv_block = p["tiles"]

    p["split"] = rng.random() < 0.15

    def triton_patches():
        module = triton_module("multi_scan_triton")
        return (patched(module, SCAN_CHUNK=chunk, SCAN_BLOCK_D=block_d, CONV_CHUNK=conv_chunk,
                        CONV_BLOCK_E=conv_block), deterministic(p["deterministic"]), split(p, module))

    context = backend_context(rng, p, triton_patches)

    def fn():
        return multi_scan_inner_fn(*args[:-1], gate=args[-1])

    def ref():
        with projection_autocast(p):
            return multi_scan_reference(args)

    return p, inp, fn, ref, multi_scan_tolerance(p, dtype), context


def merge_weights(inp, E, hidden, dtype, rng):
    return [inp.add("norm_weight", (E,), dtype, pick(rng, LAYOUTS), scale=0.1, shift=1.0),
            inp.add("norm_bias", (E,), dtype, pick(rng, LAYOUTS), scale=0.1),
            inp.add("reduce_weight", (hidden, E), dtype, pick(rng, LAYOUTS), scale=E ** -0.5),
            inp.add("reduce_bias", (hidden,), dtype, pick(rng, LAYOUTS), scale=0.1),
            inp.add("select_weight", (E, hidden), dtype, pick(rng, LAYOUTS), scale=hidden ** -0.5),
            inp.add("select_bias", (E,), dtype, pick(rng, LAYOUTS), scale=0.1)]


MERGE_TILES = [(16, 8, 16, 64), (16, 8, 16, 64), (4, 4, 4, 8), (2, 1, 8, 2)]


def case_merge(rng, g):
    dtype = pick(rng, [F32, F32, BF16, F16])
    p = dict(batch=pick(rng, [1, 1, 2, 3]), K=pick(rng, [1, 2, 3, 4]), T=pick(rng, [1, 2, 3, 5, 16, 17, 33]),
             E=pick(rng, [1, 2, 3, 7, 13, 64, 65, 100, 129, 300]), hidden=pick(rng, [1, 2, 3, 5]),
             dtype=DTYPE_NAME[dtype],
             y_layout=pick(rng, LAYOUTS), eps=pick(rng, [1e-5, 1e-5, 1e-6, 1e-2]), tiles=pick(rng, MERGE_TILES),
             shift=pick(rng, [0.0, 0.0, 3.0]))
    draw_autocast(rng, p)
    wdtype = weight_dtype(rng, p, dtype)
    p["weight_dtype"] = DTYPE_NAME[wdtype]
    inp = Inputs(g)
    y = inp.add("y", (p["batch"], p["K"], p["T"], p["E"]), dtype, p["y_layout"], shift=p["shift"])
    w = merge_weights(inp, p["E"], p["hidden"], wdtype, rng)
    rows, grad_rows, merge_rows, cols = p["tiles"]

    p["split"] = rng.random() < 0.15

    def triton_patches():
        module = triton_module("attention_merge_triton")
        return (patched(module, ROWS=rows, INPUT_GRAD_ROWS=grad_rows, MERGE_ROWS=merge_rows, MERGE_COLS=cols),
                split(p, module))

    context = backend_context(rng, p, triton_patches)

    def fn():
        return attention_merge_fn(y, *w, eps=p["eps"])

    def ref():
        return attention_merge_ref(y, *cast_all(w, y.dtype), eps=p["eps"])

    return p, inp, fn, ref, tol_of(dtype) * (2 if dtype != F32 else 1), context


def case_scan_merge(rng, g):
    dtype, p = multi_scan_params(rng)
    p["hidden"] = pick(rng, [1, 2, 3])
    p["eps"] = pick(rng, [1e-5, 1e-2])
    inp, args = multi_scan_problem(rng, g, p, dtype)
    w = merge_weights(inp, p["E"], p["hidden"], p["weight_dtype"], rng)
    p["param_dtype"], p["weight_dtype"] = DTYPE_NAME[p["param_dtype"]], DTYPE_NAME[p["weight_dtype"]]

    context = backend_context(rng, p)

    def fn():
        return multi_scan_attention_merge_fn(*args[:-1], gate=args[-1], attention_weights=w, eps=p["eps"])

    def ref():   # the merge computes in fp32 under autocast
        with projection_autocast(p):
            y = multi_scan_reference(args)
        return attention_merge_ref(y, *cast_all(w, y.dtype), eps=p["eps"])

    return p, inp, fn, ref, multi_scan_tolerance(p, dtype), context


CASES = dict(selective_scan=case_selective_scan, mamba_inner=case_mamba_inner, conv1d=case_conv,
             conv1d_update=case_conv_update, multi_scan=case_multi_scan, attention_merge=case_merge,
             multi_scan_attention_merge=case_scan_merge)
# the ops whose cpu backend has a PyTorch fallback (the fused ones have none: forced, they refuse to run)
FALLBACK_OPS = ("selective_scan", "mamba_inner", "conv1d", "conv1d_update")
WEIGHTS = dict(selective_scan=6, mamba_inner=2, conv1d=4, conv1d_update=1, multi_scan=5, attention_merge=4,
               multi_scan_attention_merge=1)


def jsonable(v):
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, torch.dtype):
        return DTYPE_NAME.get(v, str(v))
    return v


def select_backend(backend: str, isa: Optional[str]) -> None:
    """Set up the process for ``backend``: the Triton interpreter (before triton is imported), or the instruction set
    of the C kernels (``off``: their PyTorch fallback)."""
    RUN["backend"] = backend
    if backend == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
        from fast_interpreter import use_fast_interpreter     # imports triton: after the interpreter is chosen
        use_fast_interpreter()
        return
    if isa == "off":
        os.environ[ckernel.DISABLE_VAR] = "0"
    elif isa:
        os.environ[ckernel.ISA_VAR] = isa
    ckernel.reset()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("triton", "cpu"), default="triton")
    parser.add_argument("--isa", choices=(*ckernel.ISAS, "off"), default=None,
                        help="cpu backend: build the C kernels for this instruction set (off: the PyTorch fallback)")
    parser.add_argument("--budget", type=float, default=540.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--ops", default=None, help="default: every op (with --isa off: those with a fallback)")
    parser.add_argument("--log", default=None, help="default: <backend>_fuzz.jsonl")
    parser.add_argument("--max-cases", type=int, default=100000)
    parser.add_argument("--autocast", type=float, default=RUN["autocast"],
                        help="the share of the cases of ops that take autocast run under a bf16 / fp16 region "
                             "(a case's draws depend on it: --only needs the share of the run)")
    parser.add_argument("--only", type=int, default=None, help="rerun one case number (prints the traceback)")
    args = parser.parse_args()
    select_backend(args.backend, args.isa)
    RUN["autocast"] = args.autocast
    torch.set_num_threads(1)
    shard, shards = (int(x) for x in args.shard.split("/"))
    ops = args.ops.split(",") if args.ops else list(FALLBACK_OPS if args.isa == "off" else CASES)
    population = [op for op in ops for _ in range(WEIGHTS[op])]
    import localmamba_conv1d
    import localmamba_ssm
    isa = f" (C kernels: {ckernel.isa_summary()})" if args.backend == "cpu" else ""
    print(f"fuzzing the {args.backend} backend{isa} of {localmamba_ssm.__file__} and {localmamba_conv1d.__file__}",
          flush=True)
    start = time.time()
    failures, counts, n = [], {}, 0
    with open(args.log or f"{args.backend}_fuzz.jsonl", "a") as log:
        for case in range(args.max_cases):
            if args.only is None and time.time() - start > args.budget:
                break
            if args.only is not None and case != args.only:
                continue
            if case % shards != shard:
                continue
            rng = random.Random(args.seed * 1000003 + case)
            op = pick(rng, population)
            g = torch.Generator().manual_seed(args.seed * 1000003 + case)
            t0 = time.time()
            record = dict(case=case, op=op)
            try:
                params, inputs, fn, ref, tol, context = CASES[op](rng, g)
                record.update(params=jsonable(params), layouts=inputs.layouts, tol=tol)

                def gold(weights_of, op=op, case=case):
                    GOLD["on"] = True
                    try:
                        rng64 = random.Random(args.seed * 1000003 + case)
                        pick(rng64, population)
                        _, inputs64, _, ref64, _, _ = CASES[op](rng64, torch.Generator().manual_seed(
                            args.seed * 1000003 + case))
                        return forward_backward(ref64, inputs64.grad_leaves(), weights_of)
                    finally:
                        GOLD["on"] = False

                problems, errors = differential(fn, ref, inputs, tol, seed=case, context=context, gold=gold)
                record.update(errors={k: float(f"{v:.3g}") for k, v in errors.items()})
            except Exception as exc:  # a crash is a finding
                problems = [f"crash: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"]
                if args.only is not None:
                    traceback.print_exc()
            record.update(problems=problems, seconds=round(time.time() - t0, 2))
            log.write(json.dumps(record) + "\n")
            log.flush()
            n += 1
            counts[op] = counts.get(op, 0) + 1
            status = "FAIL" if problems else "ok"
            print(f"[{time.time() - start:6.1f}s] case {case} {op} {status} {'; '.join(problems)[:400]}", flush=True)
            if problems:
                failures.append(record)
    print(f"\n{n} cases in {time.time() - start:.0f}s: {counts}; {len(failures)} failing")
    for rec in failures:
        print(f"  case {rec['case']} {rec['op']}: {'; '.join(rec['problems'])[:300]}\n     {rec.get('params')}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
