"""The fused multi-direction mixer ops against per-direction formulas, on every CPU backend.

``multi_scan_inner_fn`` must equal, per direction, gathering the sequence through the index table, the Mamba inner
function (conv, projections, scan, gate) on it, and putting each output back at its token; ``attention_merge_fn``
must equal the channel attention per direction, summed.
"""
import pytest
import torch
import torch.nn.functional as F

from localmamba_ssm import (attention_merge_fn, attention_merge_ref, mamba_inner_no_out_proj_ref,
                            multi_scan_attention_merge_fn, multi_scan_inner_fn,
                            multi_scan_inner_ref, selective_scan_ref)


def random_index(num_dirs: int, num_tokens: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(K, length) tables listing every token once, at random positions, the rest padding (value T)."""
    rows = []
    for _ in range(num_dirs):
        row = torch.full((length,), num_tokens, dtype=torch.long)
        slots = torch.randperm(length, generator=generator)[:num_tokens]
        row[slots] = torch.randperm(num_tokens, generator=generator)
        rows.append(row)
    return torch.stack(rows)


def make_problem(batch=2, num_tokens=11, length=14, num_dirs=3, inner=12, rank=3, state=5, width=4, gate=True,
                 conv=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    channels = 2 * inner + 1 if gate else inner
    params = dict(
        tokens=rand(batch, num_tokens, channels),
        index=random_index(num_dirs, num_tokens, length, g),
        x_proj_weight=rand(num_dirs, rank + 2 * state, inner, scale=inner ** -0.5),
        dt_proj_weight=rand(num_dirs, inner, rank, scale=rank ** -0.5),
        dt_proj_bias=rand(num_dirs, inner, scale=0.5),
        A_log=rand(num_dirs, inner, state, scale=0.5),
        D=rand(num_dirs, inner),
        conv_weight=rand(num_dirs, inner, 1, width, scale=0.5) if conv else None,
        conv_bias=rand(num_dirs, inner, scale=0.1) if conv else None,
    )
    return params


def per_direction_formula(p, gate):
    """Direction by direction with the single-direction references: (Bt, K, T, E)."""
    tokens, index = p['tokens'], p['index']
    batch, num_tokens = tokens.shape[:2]
    inner = p['x_proj_weight'].shape[2]
    padded = F.pad(tokens, (0, 0, 0, 1))
    outputs = []
    for k in range(index.shape[0]):
        seq = padded[:, index[k]].transpose(1, 2)                                     # (Bt, C, L)
        x, z = seq[:, :inner], seq[:, inner:2 * inner]
        if p['conv_weight'] is not None and gate:
            y = mamba_inner_no_out_proj_ref(
                torch.cat([x, z], 1), p['conv_weight'][k], p['conv_bias'][k], p['x_proj_weight'][k],
                p['dt_proj_weight'][k], -torch.exp(p['A_log'][k]), D=p['D'][k], delta_bias=p['dt_proj_bias'][k])
        else:
            u = x
            if p['conv_weight'] is not None:
                u = F.silu(F.conv1d(x, p['conv_weight'][k], p['conv_bias'][k], padding=p['conv_weight'].shape[-1] - 1,
                                    groups=inner)[..., :x.shape[-1]])
            x_dbl = torch.einsum('re,bel->brl', p['x_proj_weight'][k], u)
            rank, state = p['dt_proj_weight'].shape[2], p['A_log'].shape[2]
            delta = torch.einsum('er,brl->bel', p['dt_proj_weight'][k], x_dbl[:, :rank])
            y = selective_scan_ref(u, delta, -torch.exp(p['A_log'][k]), x_dbl[:, rank:rank + state],
                                   x_dbl[:, rank + state:], p['D'][k], z if gate else None, p['dt_proj_bias'][k], True)
        out = torch.zeros(batch, num_tokens + 1, inner, dtype=y.dtype)
        out[:, index[k]] = y.transpose(1, 2)
        outputs.append(out[:, :num_tokens])
    return torch.stack(outputs, 1)


def grads(outputs, inputs, weight):
    inputs = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad((outputs * weight).sum(), inputs, allow_unused=True)


@pytest.mark.parametrize('gate, conv', [(True, True), (False, False), (False, True)])
def test_reference_equals_per_direction_formula(gate, conv):
    p = make_problem(gate=gate, conv=conv, dtype=torch.float64)
    torch.testing.assert_close(multi_scan_inner_ref(**p, gate=gate), per_direction_formula(p, gate))


def assert_backend_matches_reference(p, gate):
    """multi_scan_inner_fn on the chosen backend equals the reference: outputs, and the gradients of every input."""
    weight = torch.randn(p['tokens'].shape[0], p['index'].shape[0], p['tokens'].shape[1], p['x_proj_weight'].shape[2])
    out = multi_scan_inner_fn(**p, gate=gate)
    expected = multi_scan_inner_ref(**p, gate=gate)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    inputs = [v for key, v in p.items() if key != 'index']
    for got, want in zip(grads(out, inputs, weight), grads(expected, inputs, weight)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('gate, conv', [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize('shape', [dict(), dict(batch=3, num_tokens=9, length=9, num_dirs=2, inner=19, rank=2, state=16,
                                                width=3)])
def test_backend_matches_reference_outputs_and_gradients(cpu_backend, gate, conv, shape):
    assert_backend_matches_reference(make_problem(gate=gate, conv=conv, **shape), gate)


def test_inference_calls_of_changing_sizes_match_the_reference(cpu_backend):
    """Without autograd the conv's sequences live in a buffer reused across calls: a call after a bigger one and a
    call after a smaller one (the buffer grows) are both right."""
    problems = [make_problem(batch=3, length=20, inner=16, seed=1), make_problem(seed=2),
                make_problem(batch=4, num_tokens=15, length=21, inner=20, seed=3)]
    with torch.no_grad():
        for p in problems:
            torch.testing.assert_close(multi_scan_inner_fn(**p, gate=True), multi_scan_inner_ref(**p, gate=True),
                                       rtol=1e-5, atol=1e-5)


def test_a_backward_after_inference_mode_calls_is_right(cpu_backend):
    """The reused buffers first made under torch.inference_mode serve a later backward (which updates one in place)."""
    from localmamba_ssm.ops.cpu import multi_scan_cpu

    multi_scan_cpu._SCRATCH.__dict__.clear()                  # this thread's buffers are made afresh below
    p = make_problem(batch=3, length=20, inner=16, seed=6)
    with torch.inference_mode():
        multi_scan_inner_fn(**p, gate=True)
    assert_backend_matches_reference(p, True)


def test_padding_positions_never_reach_outputs(cpu_backend):
    """Tokens listed after padding inside a sequence still see the right state: padding zeros are real steps."""
    p = make_problem(num_tokens=4, length=8)
    p['index'] = torch.tensor([[0, 4, 1, 4, 2, 3, 4, 4], [3, 2, 1, 0, 4, 4, 4, 4], [4, 4, 0, 1, 2, 3, 4, 4]])
    torch.testing.assert_close(multi_scan_inner_fn(**p, gate=True), per_direction_formula(
        {k: (v.detach() if torch.is_tensor(v) else v) for k, v in p.items()}, True), rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_refused_by_name():
    p = make_problem()
    p['A_log'] = p['A_log'][:, :5]
    with pytest.raises(ValueError, match='A_log'):
        multi_scan_inner_fn(**p, gate=True)
    p = make_problem()
    p['index'] = p['index'].int()
    with pytest.raises(ValueError, match='int64'):
        multi_scan_inner_fn(**p, gate=True)


def attention_problem(batch=2, num_dirs=3, num_tokens=10, dim=12, hidden=5, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return (rand(batch, num_dirs, num_tokens, dim), rand(dim, scale=0.5) + 1, rand(dim, scale=0.1),
            rand(hidden, dim, scale=dim ** -0.5), rand(hidden, scale=0.1), rand(dim, hidden, scale=hidden ** -0.5),
            rand(dim, scale=0.1))


def test_attention_merge_reference_equals_formula():
    y, nw, nb, rw, rb, sw, sb = attention_problem()
    expected = torch.zeros_like(y[:, 0])
    for k in range(y.shape[1]):
        summary = F.layer_norm(y[:, k], (y.shape[-1],), nw, nb, 1e-5).mean(1, keepdim=True)
        expected = expected + y[:, k] * torch.sigmoid(F.linear(F.gelu(F.linear(summary, rw, rb)), sw, sb))
    torch.testing.assert_close(attention_merge_ref(y, nw, nb, rw, rb, sw, sb), expected)


def assert_attention_merge_matches_reference(args):
    """attention_merge_fn on the chosen backend equals the reference: output, and the gradients of every input."""
    out = attention_merge_fn(*args)
    expected = attention_merge_ref(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(out)
    for got, want in zip(grads(out, args, weight), grads(expected, args, weight)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape', [dict(), dict(batch=1, num_dirs=4, num_tokens=7, dim=21, hidden=3)])
def test_attention_merge_backend_matches_reference(cpu_backend, shape):
    assert_attention_merge_matches_reference(attention_problem(**shape))


def test_attention_merge_of_near_constant_rows_uses_the_eps(cpu_backend):
    """The LayerNorm of a direction's row whose values are (nearly) all equal is ruled by its eps (1e-5): a constant
    row normalises to 0 (not 0 / 0), one of variance 1e-6 by 1 / sqrt(1e-6 + 1e-5); output and gradients as the
    reference."""
    args = attention_problem()
    y = args[0].detach().clone()
    y[:, 1, 3] = 0.7
    y[:, 0, 5] = 0.7 + 1e-3 * torch.randn(y.shape[-1], generator=torch.Generator().manual_seed(1))
    assert_attention_merge_matches_reference((y.requires_grad_(), *args[1:]))


def test_reference_gradients_float64():
    p = make_problem(batch=1, num_tokens=4, length=5, num_dirs=2, inner=3, rank=1, state=2, width=2,
                     dtype=torch.float64)
    names = [k for k, v in p.items() if torch.is_tensor(v) and v.requires_grad]

    def fn(*tensors):
        return multi_scan_inner_ref(**{**p, **dict(zip(names, tensors))}, gate=True)

    assert torch.autograd.gradcheck(fn, [p[k] for k in names])


@pytest.mark.parametrize('gate, conv', [(True, True), (False, False)])
def test_scan_and_merge_in_one_call_equals_the_two_references(cpu_backend, gate, conv):
    """multi_scan_attention_merge_fn = attention_merge_ref(multi_scan_inner_ref(...)): without autograd (on the cpu
    backend: the directions' outputs in a reused buffer, called twice), and with gradients of every input."""
    p = make_problem(gate=gate, conv=conv)
    attention = attention_problem(batch=p['tokens'].shape[0], num_dirs=p['index'].shape[0],
                                  num_tokens=p['tokens'].shape[1], dim=p['x_proj_weight'].shape[2], seed=4)[1:]
    expected = attention_merge_ref(multi_scan_inner_ref(**p, gate=gate), *attention)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(multi_scan_attention_merge_fn(**p, gate=gate, attention_weights=attention),
                                       expected, rtol=1e-5, atol=1e-5)
    out = multi_scan_attention_merge_fn(**p, gate=gate, attention_weights=attention)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    inputs = [v for key, v in p.items() if key != 'index' and v is not None] + list(attention)
    weight = torch.randn_like(out)
    for got, want in zip(grads(out, inputs, weight), grads(expected, inputs, weight)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_merge_uses_the_eps_it_is_given(cpu_backend):
    """An eps other than the default (0.5, of the order of the rows' variance) reaches the LayerNorm: the merge, its
    gradients and the scan + merge in one call (with and without autograd) equal the references at that eps, which
    differ clearly from those at the default."""
    p = make_problem(gate=False, conv=False)
    attention = attention_problem(batch=2, num_dirs=3, num_tokens=11, dim=12, seed=4)[1:]
    y = multi_scan_inner_ref(**p, gate=False).detach().requires_grad_()
    expected = attention_merge_ref(y, *attention, eps=0.5)
    assert (expected - attention_merge_ref(y, *attention)).abs().max() > 1e-3
    out = attention_merge_fn(y, *attention, eps=0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(out)
    for got, want in zip(grads(out, [y, *attention], weight), grads(expected, [y, *attention], weight)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            fused = multi_scan_attention_merge_fn(**p, gate=False, attention_weights=attention, eps=0.5)
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_scan_and_merge_without_autograd_keeps_the_outputs_in_one_reused_buffer(force_backend):
    """On the cpu backends and without autograd, the directions' outputs are written to the per-thread scratch
    buffer (no fresh tensor per call)."""
    from localmamba_ssm.ops.cpu import multi_scan_cpu

    p = make_problem(gate=False, conv=False)
    shape = (2, 3, 11, 12)                                                   # (Bt, K, T, E) of the problem
    attention = attention_problem(*shape, seed=5)[1:]
    buffer = multi_scan_cpu.scratch('outputs', *shape).zero_()
    force_backend('cpu')
    with torch.no_grad():
        multi_scan_attention_merge_fn(**p, attention_weights=attention)
        expected = multi_scan_inner_ref(**p)
    assert multi_scan_cpu.scratch('outputs', *shape).data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(buffer, expected, rtol=1e-5, atol=1e-5)


def test_a_buffer_over_the_cap_is_not_kept(monkeypatch):
    """Buffers up to SCRATCH_MAX_BYTES are kept and reused; a bigger one is fresh each call (nothing held)."""
    from localmamba_ssm.ops.cpu import multi_scan_cpu

    monkeypatch.setattr(multi_scan_cpu, "SCRATCH_MAX_BYTES", 4096)
    kept = multi_scan_cpu.scratch("cap_test", 32, 32)                                # 4096 bytes: kept
    assert multi_scan_cpu.scratch("cap_test", 16, 64).data_ptr() == kept.data_ptr()
    over = multi_scan_cpu.scratch("cap_test", 33, 32)
    assert over.shape == (33, 32) and over.data_ptr() != kept.data_ptr()
    assert multi_scan_cpu.scratch("cap_test", 32, 32).data_ptr() == kept.data_ptr()  # the kept one is untouched


def test_scan_and_merge_refuses_bad_shapes_by_name(cpu_backend):
    p = make_problem(gate=False, conv=False)
    attention = list(attention_problem(dim=12)[1:])
    attention[0] = attention[0][:5]
    with pytest.raises(ValueError, match='norm_weight'):
        multi_scan_attention_merge_fn(**p, attention_weights=attention)
    p['A_log'] = p['A_log'][:, :5]
    with pytest.raises(ValueError, match='A_log'):
        multi_scan_attention_merge_fn(**p, attention_weights=attention_problem(dim=12)[1:])
