"""UperNet and Mask2Former from the LocalMamba segmentation configs, shrunk: one training step and one inference step
on CPU with non-square 160x128 images."""
import copy

import pytest
import torch

from conftest import (IMAGE_HW, apply_advice, assert_backbone_gradients, loss_and_grads, require, seg_batch,
                      seg_config, tiny_vim_backbone, tiny_vssm_backbone)

require('mmseg')


def _built_segmentor(model_cfg: dict) -> torch.nn.Module:
    """The segmentor of ``model_cfg`` built in mmseg's scope (after seeding 0), BatchNorm in place of SyncBN, its
    weights initialised."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    model.init_weights()
    return model


def _assert_trains_and_segments(model: torch.nn.Module) -> None:
    """A training step of two images gives a finite positive loss and reaches every backbone parameter; inference
    gives each image finite 150-class logits and its prediction at the image's size."""
    loss = loss_and_grads(model, seg_batch())
    assert torch.isfinite(loss) and loss > 0
    assert_backbone_gradients(model.backbone)

    model.eval()
    with torch.no_grad():
        results = model.test_step(seg_batch())
    assert [tuple(sample.seg_logits.data.shape) for sample in results] == [(150, *IMAGE_HW)] * 2
    assert all(tuple(sample.pred_sem_seg.data.shape) == (1, *IMAGE_HW) for sample in results)
    assert all(torch.isfinite(sample.seg_logits.data).all() for sample in results)


def _shrink_heads(model: dict, in_channels: list[int], aux_in: int) -> dict:
    model['decode_head'].update(in_channels=in_channels, channels=32)
    model['auxiliary_head'].update(in_channels=aux_in, channels=16)
    model['data_preprocessor']['size'] = IMAGE_HW
    return model


def _vim_model_cfg():
    model = copy.deepcopy(seg_config('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = tiny_vim_backbone(model['backbone'], depth=4, out_indices=[0, 1, 2, 3], width=32)
    return _shrink_heads(model, [32] * 4, 32)


def _vssm_model_cfg():
    model = copy.deepcopy(seg_config('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    return _shrink_heads(model, [16, 32, 64, 128], 64)


@pytest.mark.parametrize('make_cfg, strides', [(_vim_model_cfg, [16] * 4), (_vssm_model_cfg, [4, 8, 16, 32])],
                         ids=['local_vim', 'local_vssm'])
def test_upernet_train_and_inference_steps(make_cfg, strides):
    model = _built_segmentor(make_cfg())

    feats = model.backbone(torch.randn(1, 3, *IMAGE_HW))
    assert [tuple(f.shape[-2:]) for f in feats] == [(IMAGE_HW[0] // s, IMAGE_HW[1] // s) for s in strides]

    _assert_trains_and_segments(model)


def test_one_local_vim_map_reaches_an_fcn_head_whole():
    """mmseg's MM_LocalVim gives a list for one out index too: the FCN head picks its map by in_index (a bare map
    would be indexed by its batch, a 3-D image: 'expected 4D input'); mmdet's keeps the bare map SimpleFPN takes."""
    model = copy.deepcopy(seg_config('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = tiny_vim_backbone(model['backbone'], depth=2, out_indices=[1], width=32)
    model['decode_head'] = dict(type='FCNHead', in_channels=32, in_index=0, channels=16, num_convs=1,
                                concat_input=False, num_classes=150, norm_cfg=dict(type='BN', requires_grad=True))
    model.pop('auxiliary_head')
    model['data_preprocessor']['size'] = IMAGE_HW
    model = _built_segmentor(model)

    feats = model.backbone(torch.randn(2, 3, *IMAGE_HW))
    grid = (IMAGE_HW[0] // 16, IMAGE_HW[1] // 16)
    assert isinstance(feats, list) and [tuple(f.shape) for f in feats] == [(2, 32, *grid)]
    loss = loss_and_grads(model, seg_batch())
    assert torch.isfinite(loss) and loss > 0
    model.eval()
    with torch.no_grad():
        results = model.test_step(seg_batch())
    assert [tuple(sample.seg_logits.data.shape) for sample in results] == [(150, *IMAGE_HW)] * 2


def _mask2former_model_cfg(local_vim: bool) -> dict:
    """The LocalVMamba-T Mask2Former config's model: one block per stage (16 .. 128 channels), or a 4-layer LocalVim
    of width 32 in its place (four maps of stride 16), a 32-channel head of 10 queries, one encoder layer and three
    decoder layers (one per level), 1024 sampled points."""
    model = copy.deepcopy(seg_config('mask2former_local_vssm_tiny_8xb2-160k_ade20k-512x512.py').model)
    if local_vim:
        vim = seg_config('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py').model.backbone
        model['backbone'] = tiny_vim_backbone(vim, depth=4, out_indices=[0, 1, 2, 3], width=32)
    else:
        model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['data_preprocessor']['size'] = IMAGE_HW
    head = model['decode_head']
    head.update(in_channels=[32] * 4 if local_vim else [16, 32, 64, 128], feat_channels=32, out_channels=32,
                num_queries=10)
    head['train_cfg']['num_points'] = 1024
    encoder = head['pixel_decoder']['encoder']
    encoder['num_layers'] = 1
    encoder['layer_cfg']['self_attn_cfg'].update(embed_dims=32, num_heads=2)
    encoder['layer_cfg']['ffn_cfg'].update(embed_dims=32, feedforward_channels=64)
    head['pixel_decoder']['positional_encoding']['num_feats'] = 16
    head['positional_encoding']['num_feats'] = 16
    decoder = head['transformer_decoder']
    decoder['num_layers'] = 3
    for attention in ('self_attn_cfg', 'cross_attn_cfg'):
        decoder['layer_cfg'][attention].update(embed_dims=32, num_heads=2)
    decoder['layer_cfg']['ffn_cfg'].update(embed_dims=32, feedforward_channels=64)
    return model


@pytest.mark.parametrize('local_vim', [False, True], ids=['local_vssm', 'local_vim'])
def test_mask2former_train_and_inference_steps(local_vim):
    """The shipped LocalVMamba-T Mask2Former config, shrunk, and with LocalVim's maps, all of stride 16, in its place
    (the pixel decoder's strides stay 4 .. 32: their values only scale its points): a training step reaches every
    backbone parameter, and inference gives 150-class logits at the image's size."""
    import mmdet.models  # noqa: F401  (the config's custom_imports: the pixel decoder, losses and assigner)
    model = _built_segmentor(_mask2former_model_cfg(local_vim))

    _assert_trains_and_segments(model)


def _untrained(model: torch.nn.Module) -> list[str]:
    """The trainable backbone parameters that got no gradient, by module (their names' first three parts)."""
    return sorted({'.'.join(name.split('.')[:3]) for name, param in model.backbone.named_parameters()
                   if param.requires_grad and param.grad is None})


def test_mask2former_that_would_leave_a_stage_unread_is_refused_and_its_fit_trains_every_stage():
    """The shrunk Mask2Former config with the in_channels of stages 0 to 2: it trains, but stage 3 (and the merge
    into it) and its output norm get no gradient (DistributedDataParallel stops on them). The check refuses it; with
    the line's --cfg-options (read stage 3 too) a training step reaches every backbone parameter, and the out_indices
    it names (give only stages 0 to 2) pass the check too."""
    import mmdet.models  # noqa: F401
    from mmengine.config import Config

    from classification.dense import map_fit

    model = _mask2former_model_cfg(local_vim=False)
    model['decode_head']['in_channels'] = [16, 32, 64]
    cfg = Config(dict(model=model))
    problem = map_fit.neck_input_problem(cfg.model)
    assert problem == (
        'model.decode_head (Mask2FormerHead) takes 3 maps of in_channels [16, 32, 64], but model.backbone '
        '(MM_LocalVSSM, out_indices (0, 1, 2, 3)) gives 4 maps of [16, 32, 64, 128] channels (stages 0, 1, 2, 3), and '
        'it would leave stage 3 unread: give only the maps it reads (--cfg-options '
        'model.backbone.out_indices=(0,1,2)), or read them all: set --cfg-options '
        'model.decode_head.in_channels=[16,32,64,128]')
    segmentor = _built_segmentor(cfg.model)
    assert torch.isfinite(loss_and_grads(segmentor, seg_batch()))
    assert _untrained(segmentor) == ['layers.2.downsample', 'layers.3.blocks', 'outnorm3.bias', 'outnorm3.weight']

    fewer = copy.deepcopy(cfg)
    apply_advice(fewer, 'set --cfg-options model.backbone.out_indices=(0,1,2)')
    assert map_fit.neck_input_problem(fewer.model) is None
    apply_advice(cfg, problem)
    assert map_fit.neck_input_problem(cfg.model) is None
    segmentor = _built_segmentor(cfg.model)
    assert torch.isfinite(loss_and_grads(segmentor, seg_batch()))
    assert _untrained(segmentor) == []
    assert_backbone_gradients(segmentor.backbone)
