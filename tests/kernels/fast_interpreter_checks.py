"""Run by test_fast_interpreter.py in a subprocess with TRITON_INTERPRET=1: our scan kernels' combine functions under
the interpreter's own element-by-element ``tl.associative_scan`` and under fast_interpreter's slice-by-slice one,
on 2-D and 3-D tiles along each axis, forward and reversed, fp32 and bf16. Prints one ``same`` line per case; exits
non-zero at the first result that differs in any bit. First, the mask check: a mask and-ed with a scalar comparison
must be refused (``refused a mask of int32 data``)."""
import sys

import torch
import triton
import triton.language as tl
from fast_interpreter import use_fast_interpreter
from triton.runtime import interpreter

from localmamba_ssm.ops.triton.scan_math import affine_combine, states_and_decayed


@triton.jit
def _affine_scan_kernel(a_ptr, b_ptr, a_out_ptr, b_out_ptr, R: tl.constexpr, C: tl.constexpr, AXIS: tl.constexpr,
                        REVERSE: tl.constexpr):
    offsets = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    a_cum, b_cum = tl.associative_scan((tl.load(a_ptr + offsets), tl.load(b_ptr + offsets)), AXIS, affine_combine,
                                       reverse=REVERSE)
    tl.store(a_out_ptr + offsets, a_cum)
    tl.store(b_out_ptr + offsets, b_cum)


@triton.jit
def _states_kernel(a_ptr, b_ptr, h0_ptr, h_ptr, ah_ptr, T: tl.constexpr, D: tl.constexpr, N: tl.constexpr):
    inner = tl.arange(0, D)[:, None] * N + tl.arange(0, N)[None, :]
    offsets = tl.arange(0, T)[:, None, None] * (D * N) + inner[None, :, :]
    h, ah = states_and_decayed(tl.load(a_ptr + offsets), tl.load(b_ptr + offsets), tl.load(h0_ptr + inner)[None])
    tl.store(h_ptr + offsets, h)
    tl.store(ah_ptr + offsets, ah)


@triton.jit
def _masked_copy_kernel(x_ptr, out_ptr, n, flag, SCALAR_IN_MASK: tl.constexpr):
    offsets = tl.arange(0, 8)
    mask = offsets < n
    if SCALAR_IN_MASK:
        mask = mask & (flag > 0)   # a runtime scalar's comparison: int32 data in the interpreter up to triton 3.8
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask, other=0.0), mask=offsets < n)


def check_masks_must_be_boolean():
    """A mask built from tensor comparisons passes; one and-ed with a scalar comparison is refused, naming the load."""
    x, out = torch.arange(8.0), torch.zeros(8)
    _masked_copy_kernel[(1,)](x, out, 5, 1, SCALAR_IN_MASK=False)
    if not torch.equal(out, torch.tensor([0.0, 1, 2, 3, 4, 0, 0, 0])):
        sys.exit(f"a masked copy of 5 of 8 values gave {out}")
    try:
        _masked_copy_kernel[(1,)](x, out, 5, 1, SCALAR_IN_MASK=True)
    except interpreter.InterpreterError as err:
        if "create_masked_load: the mask holds int32 data" not in str(err):
            sys.exit(f"a mask of int32 data refused with another message: {err}")
    else:
        sys.exit("a mask and-ed with a scalar comparison (int32 data) was not refused")
    print("refused a mask of int32 data")


def run_cases():
    """Every case's outputs, in order."""
    g = torch.Generator().manual_seed(0)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        for axis in (0, 1):
            for reverse in (False, True):
                a = torch.rand(8, 4, generator=g).to(dtype)
                b = torch.randn(8, 4, generator=g).to(dtype)
                outputs = [torch.empty_like(a), torch.empty_like(b)]
                _affine_scan_kernel[(1,)](a, b, *outputs, R=8, C=4, AXIS=axis, REVERSE=reverse)
                results.append((f"affine_combine {dtype} axis {axis} reverse {reverse}", outputs))
    a, b, h0 = torch.rand(8, 2, 4, generator=g), torch.randn(8, 2, 4, generator=g), torch.randn(2, 4, generator=g)
    outputs = [torch.empty_like(a), torch.empty_like(a)]
    _states_kernel[(1,)](a, b, h0, *outputs, T=8, D=2, N=4)
    results.append(("states_and_decayed (8, 2, 4) fp32", outputs))
    return results


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of an fp32 or bf16 tensor."""
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


def main():
    elementwise = run_cases()
    fast = use_fast_interpreter()
    check_masks_must_be_boolean()
    if not fast:
        print("unsupported: this triton's interpreter lacks what fast_interpreter replaces (triton 3.0 to 3.2)")
        return
    if interpreter.ScanOps.generic_scan.__module__ != "fast_interpreter":
        sys.exit("the interpreter's scan was not replaced")
    for (label, expected), (_, actual) in zip(elementwise, run_cases()):
        for e, a in zip(expected, actual):
            if not torch.equal(bits(e), bits(a)):
                sys.exit(f"{label}: the slice-by-slice scan differs from the element-by-element one\n{e}\n{a}")
        print(f"same {label}")


if __name__ == "__main__":
    main()
