"""Triton device functions shared by the scan kernels: a program's channel block and state lanes, the softplus of
dt, the composition of the affine steps h -> a h + b that ``tl.associative_scan`` combines (and the backward's scan
that also yields a_t h_{t-1}), one step of a (time, ...) tile, the write of a gradient that several programs
contribute to; and the launch choices both scans share."""
import torch
import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + e^x) in fp32, exact to rounding: x itself above 20 (as torch's softplus); below, log1p(e^x) as
    log(u) * e^x / (u - 1) with u = 1 + e^x rounded (the quotient undoes the rounding of u), e^x where u rounds to 1.
    log(1 + e^x) alone loses the relative precision of a small e^x: 14% off at x = -12, 2e-4 at x = -7."""
    e = tl.exp(tl.where(x > 20.0, 20.0, x))      # (not tl.minimum, which may drop a NaN)
    u = 1.0 + e
    rounded = u - 1.0
    exact = rounded == 0.0
    return tl.where(x > 20.0, x, tl.where(exact, e, tl.log(u) * (e / tl.where(exact, 1.0, rounded))))


@triton.jit
def channel_block(pid_d, dim, dstate, BD: tl.constexpr, BN: tl.constexpr):
    """The channels d (BD,) of channel block ``pid_d`` and the state lanes n (BN,): d, its mask d < dim, n, its mask
    n < dstate, and the (BD, BN) mask of both."""
    d = pid_d * BD + tl.arange(0, BD)
    dmask = d < dim
    n = tl.arange(0, BN)
    nmask = n < dstate
    return d, dmask, n, nmask, dmask[:, None] & nmask[None, :]


@triton.jit
def affine_combine(a_first, b_first, a_then, b_then):
    """Compose h -> a_first h + b_first, then h -> a_then h + b_then."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def _combine_with_decayed(a_first, b_first, q_first, a_then, b_then, q_then):
    """Compose two runs of steps, each given as its map h -> a h + b and as h -> a h + q, the map through all its
    steps but the last followed by that last step's decay alone (whose factor is a as well)."""
    carried = a_then * b_first
    return a_first * a_then, carried + b_then, carried + q_then


@triton.jit
def states_and_decayed(a, b, h0):
    """The states h_t of a (CT, ...) tile of steps h_t = a_t h_{t-1} + b_t from h0 (time first), and a_t h_{t-1}
    (what the gradients of A and dt need), from one associative scan. a_t h_{t-1} is scanned for, not recovered as
    h_t - b_t: that difference cancels to noise where a_t h_{t-1} << b_t (a decay e^{dt A} near 0), which made the
    A gradient of such a state up to 100% wrong. h_t is then a_t h_{t-1} + b_t, so that the scan's b_cum is not kept
    beside a_t h_{t-1}: the selective scan's backward spilled registers on sm_90 with triton 3.6 (N = 4, one warp)."""
    a_cum, _, q_cum = tl.associative_scan((a, b, tl.zeros_like(b)), 0, _combine_with_decayed)
    ah = a_cum * h0 + q_cum
    return ah + b, ah


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
