"""What a timm user does with the models beyond a forward pass: cast them to another dtype, train with gradient
checkpointing, and build timm's layer-wise decay parameter groups."""
import copy
import re

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

import classification  # noqa: F401  (registers the models)
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS

VIM = dict(depth=3, embed_dim=32, img_size=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:3])
VSSM = dict(depths=(1, 1, 2, 1), dims=16, directions=LOCAL_VSSM_TINY_DIRECTIONS[:5])


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


@pytest.mark.parametrize('name, kwargs', [('local_vssm_tiny', VSSM),
                                          ('local_vssm_tiny_search', dict(depths=(1, 1, 1, 1), dims=16))])
@pytest.mark.parametrize('dtype, atol', [(torch.bfloat16, 0.05), (torch.float16, 5e-3), (torch.float64, 1e-5)])
def test_local_vmamba_cast_to_another_dtype_runs_in_it(name, kwargs, dtype, atol):
    """`model.to(dtype)` as for any timm model: the fp32 scan's output is normed with the cast weights (the
    LayerNorm refused fp32 input with half/bfloat16/double weights)."""
    model = _model(name, num_classes=10, **kwargs)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(image)
        cast = copy.deepcopy(model).to(dtype)
        out = cast(image.to(dtype))
        features = cast.forward_intermediates(image.to(dtype), intermediates_only=True)
    assert out.dtype == dtype and all(f.dtype == dtype for f in features)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize('name, kwargs, mixer', [
    ('local_vim_tiny', VIM, 'layers.1.mixer'), ('local_vssm_tiny', VSSM, 'layers.2.blocks.1.op')])
def test_gradient_checkpointing_recomputes_each_layer_with_the_same_gradients(name, kwargs, mixer):
    """`set_grad_checkpointing()` (timm's train.py --grad-checkpointing) exists on LocalVim as on LocalVMamba."""
    image = torch.randn(2, 3, 32, 32)
    grads, mixer_calls = [], []
    for enable in (False, True):
        model = _model(name, num_classes=5, drop_path_rate=0., **kwargs).train()
        model.set_grad_checkpointing(enable)
        calls = []
        model.get_submodule(mixer).register_forward_pre_hook(lambda *_: calls.append(1))
        model(image).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        mixer_calls.append(len(calls))
    assert mixer_calls == [1, 2]                          # run once, then once more in the backward pass
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def _lr_scales(model: torch.nn.Module) -> dict[str, float]:
    groups = param_groups_layer_decay(model, layer_decay=0.5)
    scale_of = {id(p): g['lr_scale'] for g in groups for p in g['params']}
    return {name: scale_of[id(p)] for name, p in model.named_parameters()}


def test_layer_decay_gives_each_local_vim_layer_one_scale():
    """timm's layer-wise decay groups by ``group_matcher``: embeddings, one group per layer (norm_f with the last),
    the head; without it, timm's fallback split every layer into several groups of different learning rates."""
    scales = _lr_scales(_model('local_vim_tiny_middle_cls_token', **VIM))
    expected = {'pos_embed': 0.5 ** 4, 'cls_token': 0.5 ** 4, 'patch_embed': 0.5 ** 4, 'layers.0': 0.5 ** 3,
                'layers.1': 0.5 ** 2, 'layers.2': 0.5, 'norm_f': 0.5, 'head': 1.0}
    for name, scale in scales.items():
        prefix = next(p for p in expected if name.startswith(p + '.') or name == p)
        assert scale == expected[prefix], name


def test_layer_decay_gives_each_local_vmamba_block_one_scale():
    """Per block; a stage's downsampling joins its last block, the final norm the last block of the model."""
    scales = _lr_scales(_model('local_vssm_tiny', **VSSM))
    expected = {'patch_embed': 0.5 ** 6, 'layers.0.blocks.0': 0.5 ** 5, 'layers.0.downsample': 0.5 ** 5,
                'layers.1.': 0.5 ** 4, 'layers.2.blocks.0': 0.5 ** 3, 'layers.2.blocks.1': 0.5 ** 2,
                'layers.2.downsample': 0.5 ** 2, 'layers.3.': 0.5, 'classifier.norm': 0.5, 'classifier.head': 1.0}
    for name, scale in scales.items():
        assert scale == next(v for p, v in expected.items() if name.startswith(p)), name


def test_coarse_groups_of_local_vmamba_are_its_stages():
    """One group per stage, the final norm with the last stage (not the head, which no rule matches)."""
    model = _model('local_vssm_tiny', **VSSM)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    prefixes = [sorted({'.'.join(name.split('.')[:2]) for name in names}) for names in groups.values()]
    assert prefixes == [['patch_embed.0', 'patch_embed.2'], ['layers.0'], ['layers.1'], ['layers.2'],
                        ['classifier.norm', 'layers.3'], ['classifier.head']]


@pytest.mark.parametrize('name', ['w02', 'w2\n', 'h\n', 'w\u0662'])
def test_a_window_size_has_one_direction_name(name):
    """`w02`, `h\\n` or a non-ASCII digit named a second, 'different' direction with the same scan order, so that a
    layer could hold one direction twice under two names."""
    with pytest.raises(ValueError, match=re.escape(f'unknown scan direction {name!r}')):
        timm.create_model('local_vim_tiny', **dict(VIM, directions=[['w2', name], ['h'], ['v']]))


def test_a_depth_the_default_directions_do_not_fit_names_them_not_the_users_argument():
    with pytest.raises(ValueError, match=r"^the model's default directions \(pass directions= for another depth\): "
                                         r"has 20 layers, but the model has 3 layers$"):
        timm.create_model('local_vim_tiny', depth=3, embed_dim=32)
