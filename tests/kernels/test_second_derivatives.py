"""Second derivatives (``create_graph=True``, then a backward of the gradient: a gradient penalty, a Hessian-vector
product). The kernels' backwards are not differentiable: differentiating their gradients raises one line naming the
op and the way to the references, whose plain PyTorch ops do give them; the first derivatives are unchanged."""
import re

import pytest
import torch

from second_derivative_problems import PROBLEMS, functional_penalty, penalty, positions, weight_of

from localmamba_kernel_runtime.derivatives import SECOND_DERIVATIVE_ADVICE

CPU_BACKWARD_OPS = {
    'selective_scan': 'localmamba::selective_scan_cpu_bwd',
    'causal_conv1d': 'localmamba::causal_conv1d_cpu_bwd',
    'multi_scan_inner conv': 'localmamba::multi_scan_cpu_bwd',
    'multi_scan_inner token-major': 'localmamba::multi_scan_cpu_bwd',
    'attention_merge': 'localmamba::attention_merge_cpu_bwd',
    'multi_scan_attention_merge': 'localmamba::multi_scan_attention_merge_cpu',
}


@pytest.mark.parametrize('name', list(PROBLEMS))
def test_a_second_derivative_through_a_cpu_kernel_names_the_op_and_the_way_out(name, force_backend):
    fn, inputs = PROBLEMS[name]()
    op = CPU_BACKWARD_OPS[name]
    force_backend('cpu')
    loss, _ = penalty(fn, inputs)
    with pytest.raises(RuntimeError, match=re.escape(f"a second derivative through {op}: {SECOND_DERIVATIVE_ADVICE}")):
        loss.backward()


@pytest.mark.parametrize('name', list(PROBLEMS))
def test_the_advice_works_and_first_derivatives_are_unchanged(name, force_backend):
    """Under create_graph=True the kernels' gradients are the plain backward's; the reference (LOCALMAMBA_BACKEND=
    reference, as the error says) differentiates them, and its second derivative is torch.func's (which runs the
    reference whatever is forced)."""
    fn, inputs = PROBLEMS[name]()
    differentiable = [inputs[i] for i in positions(inputs)]
    force_backend('cpu')
    _, kernel_grads = penalty(fn, inputs)
    out = fn(*inputs)
    for grad, expected in zip(kernel_grads, torch.autograd.grad((out * weight_of(out)).sum(), differentiable)):
        torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    expected = torch.func.grad(lambda *xs: functional_penalty(fn, inputs, *xs),
                               argnums=tuple(range(len(differentiable))))(*[t.detach() for t in differentiable])
    force_backend('reference')
    loss, reference_grads = penalty(fn, inputs)
    for grad, kernel_grad in zip(reference_grads, kernel_grads):
        torch.testing.assert_close(grad, kernel_grad, rtol=1e-4, atol=1e-5)
    for got, want in zip(torch.autograd.grad(loss, differentiable), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
