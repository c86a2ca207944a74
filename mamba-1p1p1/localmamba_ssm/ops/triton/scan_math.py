"""Triton device functions shared by the scan kernels: the softplus of dt, the composition of the affine steps
h -> a h + b that ``tl.associative_scan`` combines, one step of a (time, ...) tile, the write of a gradient that
several programs contribute to; and the launch choices both scans share."""
import torch
import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + e^x) in fp32, exact to rounding: x itself above 20, e^x below -15."""
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def affine_combine(a_first, b_first, a_then, b_then):
    """Compose h -> a_first h + b_first, then h -> a_then h + b_then."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def step_at(tile, steps, which):
    """Step ``which`` of a (CT, BD, BN) tile whose steps (first axis) are numbered ``steps``: (BD, BN)."""
    return tl.sum(tl.where((steps == which)[:, None, None], tile, 0.0), axis=0)


@triton.jit
def store_or_add(ptr, value, mask, ADD: tl.constexpr):
    """Write a gradient that several programs contribute to: ``ADD``, add ``value`` atomically into a zeroed
    buffer (the sum's order varies from run to run); else store it in this program's own slot (summed afterwards)."""
    if ADD:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, value, mask=mask)


def atomic_reductions() -> bool:
    """Whether the backward kernels add up what several programs contribute to one gradient with atomics: the
    channel blocks' B / C gradients into one (.., L, N) buffer (not per-block slots, 2N / BD times the activations,
    summed afterwards) and the directions' token gradients into the tokens' gradient (not per-direction buffers).
    Atomics, unless ``torch.use_deterministic_algorithms(True)`` asks for bitwise-reproducible results."""
    return not torch.are_deterministic_algorithms_enabled()


def scan_warps(block_d: int, block_n: int) -> int:
    """Warps for a (time, block_d, block_n) scan tile: at most one thread per (channel, state) pair, up to 4 warps,
    so that the compiler keeps each pair's time steps in one thread and the scan is a loop in registers."""
    return max(1, min(4, block_d * block_n // 32))
