"""MM_LocalVim / MM_LocalVSSM on their own: output layout on non-square inputs, and loading classification
checkpoints written by tools/train.py (training form, EMA, released form), directly and through mmdet / mmseg."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import (REPO, det_config, require, seg_config, shrink_mask_rcnn, tiny_vim_backbone,
                      tiny_vssm_backbone)

require('mmengine')

from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS  # noqa: E402
from classification.models.rope import resize_grid_table  # noqa: E402
from classification.common import CheckpointError  # noqa: E402
from classification.dense import MM_LocalVim, MM_LocalVSSM  # noqa: E402

VIM_ARGS = dict(img_size=64, embed_dim=32, depth=2, directions=LOCAL_VIM_TINY_DIRECTIONS[:2], rms_norm=False,
                if_rope=True, if_rope_residual=True)
VSSM_ARGS = dict(dims=16, depths=(1, 1, 1, 1), directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])


def _channel_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps).permute(
        0, 3, 1, 2)


@pytest.mark.parametrize('hw, grid', [((128, 160), (8, 10)), ((100, 150), (7, 10))])
def test_local_vim_maps_keep_the_row_major_layout_on_non_square_inputs(hw, grid):
    torch.manual_seed(0)
    backbone = MM_LocalVim(out_indices=[0, 1], **VIM_ARGS).eval()
    for j in range(2):
        torch.nn.init.normal_(getattr(backbone, f'outnorm_{j}').bias)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        outs = backbone(x)
        ref = backbone.trunk.forward_intermediates(x, [0, 1], output_fmt='NCHW', intermediates_only=True)
    assert [tuple(o.shape) for o in outs] == [(2, 32, *grid)] * 2
    for j, (out, r) in enumerate(zip(outs, ref)):
        torch.testing.assert_close(out, _channel_norm(getattr(backbone, f'outnorm_{j}'), r))
    single = MM_LocalVim(out_indices=[1], **VIM_ARGS)
    assert isinstance(single(x), torch.Tensor)


def test_local_vim_outputs_follow_layer_order_as_the_original():
    """The original collects the chosen layers in layer order and names their norms outnorm_0, outnorm_1, ... in that
    order, whatever order out_indices is written in (as MM_LocalVSSM sorts its stages)."""
    torch.manual_seed(0)
    backbone = MM_LocalVim(out_indices=[1, 0], **VIM_ARGS).eval()
    for j in range(2):
        torch.nn.init.normal_(getattr(backbone, f'outnorm_{j}').bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = backbone(x)
        ref = backbone.trunk.forward_intermediates(x, [0, 1], output_fmt='NCHW', intermediates_only=True)
    assert backbone.out_indices == [0, 1]
    for j in range(2):
        torch.testing.assert_close(outs[j], _channel_norm(getattr(backbone, f'outnorm_{j}'), ref[j]))
    assert MM_LocalVim(out_indices=[-1, 0], **VIM_ARGS).out_indices == [0, 1]


def test_the_forward_uses_the_parameters_the_backbone_holds_after_they_are_replaced():
    """``load_state_dict(assign=True)`` and ``to_empty`` put new tensors in place of the backbone's own parameters
    (LocalVim's pos_embed, registered on the backbone and on its trunk): the forward used the trunk's old one, with
    other outputs than the loaded model's, and on a model built on the meta device stopped on a meta tensor."""
    torch.manual_seed(0)
    source = MM_LocalVim(out_indices=[1], **VIM_ARGS).eval()
    weights = source.state_dict()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = source(x)
    assigned = MM_LocalVim(out_indices=[1], **VIM_ARGS).eval()
    assigned.load_state_dict(weights, assign=True)
    with torch.device('meta'):
        empty = MM_LocalVim(out_indices=[1], **VIM_ARGS)
    empty.to_empty(device='cpu').load_state_dict(weights)
    for backbone in (assigned, empty.eval()):
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), expected)
        assert backbone.trunk.pos_embed is backbone.pos_embed


def test_local_vssm_maps_on_non_square_inputs():
    torch.manual_seed(0)
    backbone = MM_LocalVSSM(out_indices=(3, 1), **VSSM_ARGS).eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        outs = backbone(x)
        ref = backbone.trunk.forward_intermediates(x, [1, 3], intermediates_only=True)
    assert backbone.out_indices == [1, 3]
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 20), (2, 128, 4, 5)]
    for i, out, r in zip((1, 3), outs, ref):
        torch.testing.assert_close(out, _channel_norm(getattr(backbone, f'outnorm{i}'), r))


def test_backbones_reject_what_they_cannot_build():
    with pytest.raises(ValueError, match='directions'):
        MM_LocalVim(**dict(VIM_ARGS, directions=None))
    with pytest.raises(ValueError, match='mlp_ratio'):
        MM_LocalVSSM(mlp_ratio=4.0, **VSSM_ARGS)
    with pytest.raises(CheckpointError, match='no/such.pth'):
        MM_LocalVSSM(pretrained='no/such.pth', **VSSM_ARGS).init_weights()


@pytest.mark.parametrize('backbone, kwargs, out_indices, message', [
    (MM_LocalVSSM, VSSM_ARGS, (0, 4), r'\[4\] out of range for its 4 stages \(0 to 3'),
    (MM_LocalVSSM, VSSM_ARGS, (1, -3), 'names a stage twice'),
    (MM_LocalVim, VIM_ARGS, (1, 5, -3), r'\[5, -3\] out of range for its 2 layers'),
    (MM_LocalVim, VIM_ARGS, (), 'out_indices is empty'),
])
def test_out_indices_outside_the_model_are_refused_when_it_is_built(backbone, kwargs, out_indices, message):
    with pytest.raises(ValueError, match=message):
        backbone(out_indices=out_indices, **kwargs)


def test_negative_out_indices_count_from_the_last_stage():
    backbone = MM_LocalVSSM(out_indices=(-1, 0), **VSSM_ARGS)
    assert backbone.out_indices == [0, 3]
    assert [tuple(f.shape) for f in backbone(torch.randn(1, 3, 64, 64))] == [(1, 16, 16, 16), (1, 128, 2, 2)]


def test_one_out_index_may_be_an_int_as_in_openmmlab_backbones():
    """mmdet / mmseg backbones take ``out_indices=-1`` for one output: it stopped on "'int' object is not
    iterable"."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    for backbone, kwargs, index, listed in ((MM_LocalVim, VIM_ARGS, -1, [1]), (MM_LocalVSSM, VSSM_ARGS, 2, [2])):
        one = backbone(out_indices=index, **kwargs).eval()
        assert one.out_indices == listed
        reference = backbone(out_indices=listed, **kwargs).eval()
        reference.load_state_dict(one.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(one(x), reference(x))


def _weights(path, key):
    return torch.load(path, map_location='cpu', weights_only=False)[key]


def _assert_loaded(backbone, weights, skip=()):
    own = backbone.state_dict()
    for key, value in weights.items():
        if key in own and key not in skip:
            torch.testing.assert_close(own[key], value, msg=key)


def test_local_vim_loads_a_training_checkpoint_with_resized_tables(classification_checkpoints):
    path = classification_checkpoints['local_vim_tiny']
    model_weights = _weights(path, 'model')
    backbone = MM_LocalVim(out_indices=[1], pretrained_ckpt=path, **VIM_ARGS)
    backbone.init_weights()
    result = backbone.load_result
    assert sorted(result.unexpected_keys) == ['head.bias', 'head.weight', 'norm_f.weight']
    assert sorted(result.missing_keys) == ['layers.0.norm.bias', 'layers.1.norm.bias', 'outnorm_0.bias',
                                           'outnorm_0.weight']
    own = backbone.state_dict()
    assert model_weights['pos_embed'].shape == (1, 196, 32) and own['pos_embed'].shape == (1, 16, 32)
    torch.testing.assert_close(own['pos_embed'], resize_grid_table(model_weights['pos_embed'], (14, 14), (4, 4)))
    for table in ('rope.freqs_cos', 'rope.freqs_sin'):
        torch.testing.assert_close(own[table], resize_grid_table(model_weights[table], (14, 14), (4, 4)))
    _assert_loaded(backbone, model_weights, skip={'pos_embed', 'rope.freqs_cos', 'rope.freqs_sin'})

    matching = MM_LocalVim(out_indices=[1], pretrained_ckpt=path, **dict(VIM_ARGS, rms_norm=True))
    matching.init_weights()
    assert sorted(matching.load_result.missing_keys) == ['outnorm_0.bias', 'outnorm_0.weight']


def test_ema_and_released_forms_load(classification_checkpoints, tmp_path):
    path = classification_checkpoints['local_vssm_tiny']
    released = str(tmp_path / 'released.pth')    # converted while the training forms load here
    convert = subprocess.Popen([sys.executable, os.path.join(REPO, 'tools', 'convert_ckpt.py'), path, released,
                                'ema_model'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    model_weights, ema_weights = _weights(path, 'model'), _weights(path, 'ema_model')
    ema_weights = {k.removeprefix('module.'): v for k, v in ema_weights.items()}
    assert not torch.equal(model_weights['patch_embed.0.weight'], ema_weights['patch_embed.0.weight'])

    backbone = MM_LocalVSSM(pretrained=path, **VSSM_ARGS)
    backbone.init_weights()
    assert sorted(backbone.load_result.unexpected_keys) == sorted(k for k in model_weights
                                                                  if k.startswith('classifier.'))
    assert sorted(backbone.load_result.missing_keys) == sorted(f'outnorm{i}.{p}' for i in range(4)
                                                               for p in ('bias', 'weight'))
    _assert_loaded(backbone, model_weights)

    ema = MM_LocalVSSM(pretrained=path, pretrained_key='ema_model', **VSSM_ARGS)
    ema.init_weights()
    _assert_loaded(ema, ema_weights)

    log, _ = convert.communicate(timeout=300)
    assert convert.returncode == 0, log[-3000:]
    converted, source = (torch.load(f, map_location='cpu', weights_only=True) for f in (released, path))
    assert list(converted)[0] == 'state_dict'  # the run's record beside it, as convert_ckpt.py keeps it
    assert all(converted[key] == source[key] for key in converted if key not in ('state_dict', 'config'))
    from_release = MM_LocalVSSM(pretrained=released, **VSSM_ARGS)
    from_release.init_weights()
    _assert_loaded(from_release, ema_weights)


def test_detector_and_segmentor_init_weights_load_the_backbone(classification_checkpoints):
    """The Runner's init_weights() path: Mask R-CNN with LocalVim, UperNet with LocalVMamba."""
    require('mmdet')
    require('mmseg')
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    vim_path = classification_checkpoints['local_vim_tiny']
    model = copy.deepcopy(det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py').model)
    model['backbone'] = dict(tiny_vim_backbone(model['backbone'], depth=2, out_indices=[1]), pretrained_ckpt=vim_path)
    model['neck'].update(backbone_channel=32, in_channels=[8, 16, 32, 32])
    init_default_scope('mmdet')
    detector = DET_MODELS.build(shrink_mask_rcnn(model))
    detector.init_weights()
    weights = _weights(vim_path, 'model')
    torch.testing.assert_close(detector.backbone.pos_embed,
                               resize_grid_table(weights['pos_embed'], (14, 14), (4, 4)))
    _assert_loaded(detector.backbone, weights, skip={'pos_embed', 'rope.freqs_cos', 'rope.freqs_sin'})

    vssm_path = classification_checkpoints['local_vssm_tiny']
    model = copy.deepcopy(seg_config('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = dict(tiny_vssm_backbone(model['backbone']), pretrained=vssm_path)
    model['decode_head'].update(in_channels=[16, 32, 64, 128], channels=16)
    model['auxiliary_head'].update(in_channels=64, channels=16)
    init_default_scope('mmseg')
    segmentor = SEG_MODELS.build(model)
    segmentor.init_weights()
    _assert_loaded(segmentor.backbone, _weights(vssm_path, 'model'))
