"""timm options and calls a researcher makes beyond a plain forward: dynamic_img_size / dynamic_img_pad, the smallest
image each family takes, the input channels timm reads (`in_chans`), torch.jit.script (refused with its reason),
forward_intermediates(stop_early=True), create_model's device / dtype (a meta model's forward and backward), and
LocalVim's set_input_size."""
import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import classification  # noqa: F401  (registers the models)
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS
from classification.models.local_vim import checkpoint_filter_fn

VIM = dict(depth=2, embed_dim=32, directions=LOCAL_VIM_TINY_DIRECTIONS[:2])
VSSM = dict(depths=(1, 1, 1, 1), dims=16, directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])
MODELS = {'local_vim_tiny': VIM, 'local_vssm_tiny': VSSM}


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **dict(MODELS[name], **kwargs)).eval()


@pytest.mark.parametrize('name', sorted(MODELS))
def test_both_families_take_timms_dynamic_img_size(name):
    """`dynamic_img_size=True` (a TypeError before) names what both families do: the same model, any input size."""
    image = torch.randn(2, 3, 40, 56)
    model = _model(name, dynamic_img_size=True)
    assert model.dynamic_img_size is True
    with torch.no_grad():
        torch.testing.assert_close(model(image), _model(name)(image), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'takes any input size .*dynamic_img_size=False, a fixed input size, is not'):
        _model(name, dynamic_img_size=False)


def test_local_vim_dynamic_img_pad_is_its_zero_padding_and_not_padding_is_refused():
    """LocalVim zero-pads to a multiple of the patch, as timm's ViT with ``dynamic_img_pad=True``."""
    image = torch.randn(2, 3, 40, 40)
    model = _model('local_vim_tiny', dynamic_img_pad=True)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(F.pad(image, (0, 8, 0, 8))), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'^LocalVim zero-pads images .*dynamic_img_pad=False is not supported$'):
        _model('local_vim_tiny', dynamic_img_pad=False)


def test_local_vmamba_drops_a_remainder_and_refuses_dynamic_img_pad():
    """LocalVMamba's patch conv drops the pixels past a multiple of 4: padding instead would be another model."""
    image = torch.randn(2, 3, 42, 43)
    model = _model('local_vssm_tiny', dynamic_img_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(image[..., :40, :40]), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^LocalVMamba's patch embedding drops .*dynamic_img_pad=True"):
        _model('local_vssm_tiny', dynamic_img_pad=True)


@pytest.mark.parametrize('shape', [(1, 3, 2, 2), (1, 3, 3, 64), (1, 3, 64, 3), (3, 32, 32)])
def test_local_vmamba_refuses_an_image_smaller_than_a_patch_in_one_line(shape):
    """A raw conv error ('Kernel size can't be greater than actual input size') or a permute error before."""
    model = _model('local_vssm_tiny')
    message = r'^LocalVMamba: images must be \(B, C, H, W\) with H, W >= 4 \(the patch size\), got shape '
    with pytest.raises(ValueError, match=message + re.escape(str(shape)) + '$'):
        model(torch.randn(*shape))
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(torch.randn(*shape), intermediates_only=True)


def test_local_vmamba_runs_any_image_of_one_patch_or_more():
    """4x4 px is a 1x1 map in every stage (odd maps are padded at each merge); 7x5 px is the same single patch."""
    model = _model('local_vssm_tiny')
    image = torch.randn(2, 3, 7, 5)
    with torch.no_grad():
        features = model.forward_intermediates(image, intermediates_only=True)
        torch.testing.assert_close(model(image), model(image[..., :4, :4]), rtol=0, atol=0)
    assert [tuple(f.shape) for f in features] == [(2, 16, 1, 1), (2, 32, 1, 1), (2, 64, 1, 1), (2, 128, 1, 1)]


def test_local_vim_pads_any_image_of_a_pixel_or_more_and_refuses_an_empty_one():
    """A 1x1 image is one zero-padded 16 px patch; a side of 0 px was a raw conv error naming a 16x16 kernel (as if
    16 px were the minimum)."""
    model = _model('local_vim_tiny')
    image = torch.randn(2, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(F.pad(image, (0, 15, 0, 15))), rtol=0, atol=0)
    for shape in ((1, 3, 0, 32), (3, 32, 32)):
        with pytest.raises(ValueError, match=r'^LocalVim: images must be \(B, C, H, W\) with H, W >= 1 '):
            model(torch.randn(*shape))


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('name', sorted(MODELS))
def test_torch_jit_script_is_refused_with_the_reason_and_torch_export_works(name):
    """Scripting failed deep inside (a recursive helper, a `tuple[str, ...]` annotation); the scan ops dispatch in
    Python, so it cannot work (and torch deprecates it): one error names why and what to use, here torch.export."""
    model = _model(name)
    for module in (model, model.layers[0]):
        with pytest.raises(RuntimeError, match=r'^torch\.jit\.script cannot compile LocalMamba models: their scan '):
            torch.jit.script(module)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exported = torch.export.export(model, (image,)).module()
        torch.testing.assert_close(exported(image), model(image))


def test_local_vmamba_stop_early_returns_the_last_stage_run_as_a_pruned_model_does():
    """It returned the next stage's downsampled map (B, H/16, W/16, 2C) instead of the stage's own output."""
    model = _model('local_vssm_tiny')
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([1])
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, (stage,) = model.forward_intermediates(image, [1], stop_early=True, output_fmt='NHWC')
        pruned_features, _ = pruned.forward_intermediates(image, [1])
    assert features.shape == (2, 4, 4, 32)
    torch.testing.assert_close(features, stage, rtol=0, atol=0)
    torch.testing.assert_close(features, pruned_features, rtol=0, atol=0)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_a_model_on_the_meta_device_runs_forward_and_backward_in_shapes(name):
    """Shapes without memory (planning a run's size, counting FLOPs on meta tensors): the kernels' checks read
    autocast's state for the meta device, which torch does not know ('unknown device type for autocast'), and the
    values of the index tables, which a meta tensor does not have."""
    meta = _model(name, device='meta', num_classes=5).train()
    images = torch.randn(3, 3, 64, 48, device='meta', requires_grad=True)
    logits = meta(images)
    assert (logits.device.type, logits.shape) == ('meta', (3, 5))
    logits.sum().backward()
    assert images.grad.shape == images.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in meta.parameters())


@pytest.mark.parametrize('name', sorted(MODELS))
def test_create_model_takes_timms_device_and_dtype(name):
    """`create_model(name, device=..., dtype=...)` as timm's own models take them (a TypeError before): 'meta'
    allocates nothing; a dtype gives the default model's weights cast to it."""
    meta = timm.create_model(name, device='meta', **MODELS[name])
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {'meta'}
    with pytest.raises(ValueError, match=r"pretrained weights cannot load into a model on the 'meta' device"):
        timm.create_model(name, device='meta', pretrained=True, **MODELS[name])  # it loaded nothing, silently
    model = _model(name)
    double = _model(name, dtype=torch.float64)
    assert double.state_dict().keys() == model.state_dict().keys()
    for key, value in double.state_dict().items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, model.state_dict()[key].double(), rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('features_only', [False, True])
@pytest.mark.parametrize('name, channel_kwarg', [('local_vim_tiny', 'in_chans'), ('local_vim_tiny', 'channels'),
                                                 ('local_vssm_tiny', 'in_chans')])
def test_timms_input_config_reads_the_models_input_channels(name, channel_kwarg, features_only):
    """timm's input config (what its train.py / validate.py and save_for_hf read) takes a model's channels from its
    ``in_chans``, as timm's own models set it: a 1-channel model was resolved to (3, 224, 224) with 3-channel
    normalisation, so timm's loaders fed it RGB images it cannot take."""
    model = _model(name, **{channel_kwarg: 1}, features_only=features_only)
    assert model.in_chans == 1
    assert timm.models.get_model_input_config(model)['input_size'] == (1, 224, 224)
    config = timm.data.resolve_input_data_config(model)
    assert config['input_size'] == (1, 224, 224)
    assert config['mean'] == pytest.approx((sum(timm.data.IMAGENET_DEFAULT_MEAN) / 3,))
    assert config['std'] == pytest.approx((sum(timm.data.IMAGENET_DEFAULT_STD) / 3,))


@pytest.mark.parametrize('name, kwargs', [('local_vim_tiny', VIM), ('local_vim_tiny_middle_cls_token', VIM),
                                          ('local_vim_tiny_search', dict(depth=2, embed_dim=32))])
def test_local_vim_set_input_size_resizes_its_tables_as_a_checkpoint_load_does(name, kwargs):
    """timm's ``set_input_size`` (ViT's and Swin's, an AttributeError before): the tables of the new grid are those
    that ``checkpoint_filter_fn`` gives a model built at that size, and outputs at that size do not change."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs, img_size=32).eval()
    resized = copy.deepcopy(model)
    resized.set_input_size(img_size=64)
    built = timm.create_model(name, **kwargs, img_size=64)
    expected = checkpoint_filter_fn(model.state_dict(), built)
    assert resized.state_dict().keys() == expected.keys()
    for key, value in resized.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    assert resized.grid == built.grid == (4, 4) and resized.patch_embed.num_patches == 16
    assert timm.models.get_model_input_config(resized)['input_size'] == (3, 64, 64)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resized(image), model(image), rtol=0, atol=0)
    with pytest.raises(ValueError, match='another patch size'):
        resized.set_input_size(patch_size=8)
    if resized.rope is not None:
        with pytest.raises(ValueError, match='RoPE needs a square build grid'):
            resized.set_input_size(img_size=(32, 64))
