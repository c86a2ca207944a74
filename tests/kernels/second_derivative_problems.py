"""Small problems of every kernel op for the second-derivative checks (``test_second_derivatives.py`` on the CPU
kernels, ``triton_interpreter_checks.py`` / ``triton_multi_scan_checks.py`` on the Triton ones): each a function of
its inputs (fp32, those that take a gradient marked) and the inputs, with the penalty (the squared norm of a
gradient) built on them."""
import re
import sys

import torch

from classification.models.scan_maps import sequence_index
from localmamba_conv1d import causal_conv1d_fn
from localmamba_kernel_runtime.derivatives import SECOND_DERIVATIVE_ADVICE
from localmamba_ssm import attention_merge_fn, multi_scan_attention_merge_fn, multi_scan_inner_fn, selective_scan_fn


def _rand(g, *shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).float().requires_grad_()


def scan_problem():
    """selective_scan_fn's (u, delta, A, B, C, D, z, delta_bias), B / C varying, softplus on."""
    g = torch.Generator().manual_seed(0)
    dim, seqlen, state = 4, 9, 8
    return (lambda u, delta, A, B, C, D, z, bias: selective_scan_fn(u, delta, A, B, C, D, z, bias, True),
            [_rand(g, 2, dim, seqlen), _rand(g, 2, dim, seqlen, scale=0.5), _rand(g, dim, state, scale=0.5, shift=-1),
             _rand(g, 2, state, seqlen), _rand(g, 2, state, seqlen), _rand(g, dim), _rand(g, 2, dim, seqlen),
             _rand(g, dim, scale=0.5)])


def conv_problem():
    g = torch.Generator().manual_seed(1)
    return (lambda x, w, b: causal_conv1d_fn(x, w, b, activation='silu'),
            [_rand(g, 2, 4, 9), _rand(g, 4, 4, scale=0.5), _rand(g, 4, scale=0.1)])


def _mixer_inputs(g, width):
    """multi_scan_inner_fn's inputs for two directions on a 3x3 grid, gate on, conv of ``width`` (0: none)."""
    inner, state, rank, dirs = 4, 8, 2, 2
    return [_rand(g, 2, 9, 2 * inner + 1), sequence_index(('h', 'w2_flip'), (3, 3), None),
            _rand(g, dirs, rank + 2 * state, inner, scale=0.5), _rand(g, dirs, inner, rank, scale=0.5),
            _rand(g, dirs, inner, scale=0.5), _rand(g, dirs, inner, state, scale=0.5), _rand(g, dirs, inner),
            _rand(g, dirs, inner, 1, width, scale=0.5) if width else None,
            _rand(g, dirs, inner, scale=0.1) if width else None]


def _attention_inputs(g, channels=4, reduced=2):
    """attention_merge_fn's weights: norm (weight, bias), reduce (weight, bias), select (weight, bias)."""
    return [_rand(g, channels, scale=0.1, shift=1.0), _rand(g, channels, scale=0.1),
            _rand(g, reduced, channels, scale=0.5), _rand(g, reduced, scale=0.1),
            _rand(g, channels, reduced, scale=0.5), _rand(g, channels, scale=0.1)]


def multi_scan_problem(width):
    g = torch.Generator().manual_seed(2)
    return (lambda *args: multi_scan_inner_fn(*args, gate=True), _mixer_inputs(g, width))


def attention_problem():
    g = torch.Generator().manual_seed(3)
    return attention_merge_fn, [_rand(g, 2, 3, 5, 4)] + _attention_inputs(g)


def mixer_problem():
    """Both mixer ops in one call (on the CPU backends the fused ``cpu/scan_merge_cpu.py`` node)."""
    g = torch.Generator().manual_seed(4)
    scan_inputs, attention = _mixer_inputs(g, 3), _attention_inputs(g)
    return (lambda *args: multi_scan_attention_merge_fn(*args[:9], gate=True, attention_weights=args[9:]),
            scan_inputs + attention)


def weight_of(out):
    """A fixed random weight of an output's entries (the penalty's loss is their weighted sum)."""
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(9))


def positions(inputs):
    """Where the inputs that take a gradient are."""
    return [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]


def _with(inputs, where, values):
    args = list(inputs)
    for i, value in zip(where, values):
        args[i] = value
    return args


def penalty(fn, inputs):
    """The squared norm of the gradient of a weighted output sum, as a graph (create_graph=True), and the gradient."""
    out = fn(*inputs)
    grads = torch.autograd.grad((out * weight_of(out)).sum(), [inputs[i] for i in positions(inputs)],
                                create_graph=True)
    return sum(g.square().sum() for g in grads), [g.detach() for g in grads]


def functional_penalty(fn, inputs, *values):
    """``penalty``'s loss in torch.func's terms, of the values of the differentiable inputs."""
    where = positions(inputs)

    def weighted_sum(*xs):
        out = fn(*_with(inputs, where, xs))
        return (out * weight_of(out)).sum()

    grads = torch.func.grad(weighted_sum, argnums=tuple(range(len(where))))(*values)
    return sum(g.square().sum() for g in grads)


PROBLEMS = {
    'selective_scan': scan_problem,
    'causal_conv1d': conv_problem,
    'multi_scan_inner conv': lambda: multi_scan_problem(3),
    'multi_scan_inner token-major': lambda: multi_scan_problem(0),
    'attention_merge': attention_problem,
    'multi_scan_attention_merge': mixer_problem,
}


def check_second_derivatives_refused(names):
    """For the Triton interpreter checks: a second derivative through the Triton backward of each of ``names`` (keys
    of PROBLEMS) raises the one line naming its op and the references; any other outcome exits with a message."""
    for name in names:
        fn, inputs = PROBLEMS[name]()
        loss, _ = penalty(fn, inputs)
        try:
            loss.backward()
        except RuntimeError as err:
            if not re.fullmatch(r"a second derivative through localmamba::\w+_triton_bwd: "
                                + re.escape(SECOND_DERIVATIVE_ADVICE), str(err)):
                sys.exit(f"{name}: second derivative: {err}")
        else:
            sys.exit(f"{name}: a second derivative through the Triton kernels was not refused")
    print(f"ok second derivatives refused ({', '.join(names)})")
