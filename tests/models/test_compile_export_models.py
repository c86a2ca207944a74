"""Whole models under torch.compile (no graph break, same outputs and gradients) and ONNX export (both exporters).

Small models (a few layers, 32 px); the default backend on this machine is ``cpu`` (C kernels, or their PyTorch
fallback without a compiler). The graph-break test starts cold, with no kernel loaded in the process: the kernels'
one-time load happens at trace time (``kernel_available`` is a constant to dynamo), not inside the graph.
"""
import importlib.util

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from localmamba_kernel_runtime import backends, ckernel
from classification.models import scan_maps
from classification.models.scan_maps import sequence_index

VIM_DIRECTIONS = [['h', 'w3_flip'], ['v', 'w2', 'h_flip']]
VSSM_DIRECTIONS = [['h', 'w2_flip'], ['v_flip', 'w3']]


def small_vim(name='local_vim_tiny', size=32):
    """Two layers of width 16 on a 4x4 grid (3x3 at 24 px), so w2 or w3 pad."""
    torch.manual_seed(0)
    return timm.create_model(name, img_size=size, patch_size=8, embed_dim=16, depth=2, num_classes=10,
                             drop_path_rate=0., directions=VIM_DIRECTIONS), torch.randn(2, 3, size, size)


def small_vssm(name='local_vssm_tiny', size=28):
    """Two stages (8 and 16 channels) on a 28 px image: grids 7 and 4 (4 and 2 at 16 px), so w2 and w3 pad."""
    torch.manual_seed(0)
    return timm.create_model(name, dims=(8, 16), depths=(1, 1), num_classes=10, drop_path_rate=0.,
                             directions=VSSM_DIRECTIONS), torch.randn(2, 3, size, size)


def vssm_search():
    torch.manual_seed(0)
    return timm.create_model('local_vssm_tiny_search', dims=(8, 16), depths=(1, 1), num_classes=10,
                             drop_path_rate=0.), torch.randn(2, 3, 28, 28)


MODELS = {'local_vim': small_vim, 'local_vim_cls': lambda: small_vim('local_vim_tiny_middle_cls_token'),
          'local_vssm': small_vssm, 'local_vssm_search': vssm_search}


def outputs_and_grads(fn, model, image):
    model.zero_grad()
    out = fn(image)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('family', list(MODELS))
def test_compiled_model_has_no_graph_break(family):
    model, image = MODELS[family]()
    model.eval()
    torch._dynamo.reset()
    ckernel.reset()                                             # cold: the first call loads the kernels
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(image)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize('family,backend', [
    ('local_vim', 'reference'), ('local_vim', 'auto'), ('local_vssm', 'reference'), ('local_vssm', 'auto')])
def test_compiled_model_matches_eager_with_gradients(family, backend, monkeypatch):
    """fullgraph ``torch.compile`` through AOTAutograd (the ``aot_eager`` backend: the graphs inductor would get,
    with the custom ops' fake kernels and autograd formulas) in training mode. Short sequences: the reference scan
    is a Python loop over them, unrolled into the graph."""
    monkeypatch.setattr(backends, 'requested_backend', lambda: backend)
    model, image = small_vim(size=24) if family == 'local_vim' else small_vssm(size=16)
    model.train()
    torch._dynamo.reset()
    out_eager, grads_eager = outputs_and_grads(model, model, image)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    out, grads = outputs_and_grads(compiled, model, image)
    torch.testing.assert_close(out, out_eager, rtol=1e-4, atol=1e-4)
    assert grads.keys() == grads_eager.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_eager[name], rtol=1e-4, atol=1e-4, msg=name)


def test_inductor_compiled_local_vim_matches_eager():
    """The default backend (inductor), inference; one layer to keep the C++ build short."""
    torch.manual_seed(0)
    model = timm.create_model('local_vim_tiny', img_size=32, patch_size=8, embed_dim=16, depth=1, num_classes=10,
                              directions=[['h', 'w3_flip', 'v']]).eval()
    image = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(image)
        out = torch.compile(model, fullgraph=True)(image)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('names,grid,cls_position', [
    (('h', 'w3_flip'), (4, 4), None), (('v', 'w2', 'h_flip'), (5, 3), None), (('w7', 'v_flip'), (4, 4), 8),
    (('h',), (1, 1), 0)])
def test_sequence_index_op_matches_the_table_and_its_fake_shape(names, grid, cls_position):
    """The op that stands for the index table in compiled graphs: same values, and a fake kernel of the same
    shape (computed without building the table)."""
    table = sequence_index(names, grid, cls_position)
    op_table = torch.ops.localmamba.sequence_index(','.join(names), grid[0], grid[1],
                                                   -1 if cls_position is None else cls_position, torch.device('cpu'))
    assert torch.equal(op_table, table) and op_table.data_ptr() != table.data_ptr()
    torch.library.opcheck(scan_maps._sequence_index_op,
                          (','.join(names), grid[0], grid[1], -1 if cls_position is None else cls_position,
                           torch.device('cpu')), test_utils=('test_schema', 'test_faketensor'))


def test_many_index_tables_in_one_compiled_graph_keep_their_values():
    """Two tables of different shapes in one graph (``assume_constant_result`` confused the second with the first)."""
    def gather_both(x):
        first = sequence_index(('h', 'w3_flip'), (4, 4), None, x.device)
        second = sequence_index(('v', 'w2', 'h_flip'), (4, 4), None, x.device)
        padded = torch.nn.functional.pad(x, (0, 1))
        return padded[:, first], padded[:, second]

    x = torch.randn(2, 16)
    torch._dynamo.reset()
    for got, expected in zip(torch.compile(gather_both, backend='aot_eager', fullgraph=True)(x), gather_both(x)):
        assert torch.equal(got, expected)


@pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None or importlib.util.find_spec('onnx') is None,
                    reason='onnx / onnxruntime not installed')
@pytest.mark.parametrize('requested', ['reference', 'auto'])
@pytest.mark.parametrize('family', ['local_vim_cls', 'local_vssm', 'local_vssm_search'])
def test_model_exports_to_onnx(family, requested, monkeypatch, tmp_path):
    """With the reference forced, or automatically (the export then picks the reference: the C kernels' custom ops
    have no ONNX form); exported at batch 2 with a dynamic batch, run at batch 3 (a shape traced as a constant would
    fail there)."""
    import onnxruntime

    monkeypatch.setattr(backends, 'requested_backend', lambda: requested)
    model, image = MODELS[family]()
    model.eval()
    path = tmp_path / 'model.onnx'
    other = torch.randn(3, *image.shape[1:])
    with torch.no_grad():
        expected = model(other)
        torch.onnx.export(model, (image,), str(path), dynamo=False, input_names=['image'],
                          dynamic_axes={'image': {0: 'batch'}})
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {'image': other.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None or importlib.util.find_spec('onnxscript') is None,
                    reason='onnxscript / onnxruntime not installed')
@pytest.mark.skipif(torch.__version__ < '2.8', reason='before torch 2.8 the torch.export-based ONNX exporter does not '
                    'set torch.onnx.is_in_onnx_export(), which the ops and index tables read to export plain ops')
@pytest.mark.parametrize('family', ['local_vim_cls', 'local_vssm', 'local_vssm_search'])
def test_model_exports_with_the_default_onnx_exporter(family, tmp_path):
    """torch.onnx.export as torch >= 2.9 runs it by default (dynamo=True): from cold index-table caches, with a
    dynamic batch; the ONNX model at another batch size computes the model's logits, and the model still runs after
    the export (no table built during it was cached as a traced value)."""
    import onnxruntime

    model, image = MODELS[family]()
    model.eval()
    scan_maps._sequence_index.cache_clear()
    scan_maps.scan_index.cache_clear()
    path = tmp_path / 'model.onnx'
    torch.onnx.export(model, (image,), str(path), dynamo=True, dynamic_shapes=({0: 'batch'},), verbose=False)
    other = torch.randn(3, *image.shape[1:])
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    with torch.no_grad():
        expected = model(other)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('family', ['local_vim_cls', 'local_vssm'])
def test_jit_trace_of_a_fresh_model_passes_its_check(family):
    """torch.jit.trace checks a trace by tracing again: a model whose index tables were first built inside the
    trace gave two graphs (TracingCheckError). The traced model computes the model's outputs on another input."""
    model, image = MODELS[family]()
    model.eval()
    scan_maps._sequence_index.cache_clear()
    scan_maps.scan_index.cache_clear()
    with torch.no_grad():
        traced = torch.jit.trace(model, image)
        other = torch.randn_like(image)
        torch.testing.assert_close(traced(other), model(other), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family', ['local_vim_cls', 'local_vssm_search'])
@pytest.mark.parametrize('forced', ['auto', 'cpu'])
def test_torch_func_transforms_run_and_match_the_kernels(family, forced, monkeypatch):
    """``torch.func.grad`` / ``vmap`` (per-sample gradients, Jacobians) failed on the default CPU kernels: custom ops'
    autograd formulas are not transformable ("must override the setup_context staticmethod"). Under a transform the
    reference runs; its gradients are the kernels' (an ordinary backward on the ``cpu`` backend), per sample."""
    monkeypatch.setattr(backends, 'requested_backend', lambda: forced)
    model, image = MODELS[family]()
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p, x):
        return torch.func.functional_call(model, p, (x[None],)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, image)
    for i in range(image.shape[0]):
        model.zero_grad()
        loss(dict(model.named_parameters()), image[i]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-4, atol=1e-5, msg=name)
