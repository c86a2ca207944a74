"""The det/seg tools' check that the neck takes the maps the backbone gives, and the segmentation heads those of the
neck (without one, of the backbone), and that a detector's anchors and RoI extractors are set for the strides of the
maps they get. A config whose backbone out_indices (or width) changed while the neck's or the heads' in_channels did
not ended in a bare AssertionError of FPN, an IndexError or a channel error of a head, after the datasets were built;
one whose heads kept their strides trained silently wrong. Now either ends in one line that names what the backbone
(or the neck) gives and the --cfg-options that fit the neck or the heads to it."""
import copy
import os

import pytest
import torch

from conftest import (DET_CONFIGS, IMAGE_HW, REPO, SEG_CONFIGS, apply_advice, det_batch, loss_and_grads, require,
                      seg_batch, tiny_fpn_model_cfg, tiny_vssm_backbone)

from classification.dense import map_fit, run_inputs
from classification.dense.backbones import backbone_maps

DET = os.path.join(REPO, 'detection', 'configs', 'local_mamba')
SEG = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba')
FPN_CONFIG = os.path.join(DET, 'mask_rcnn_local_vssm_tiny_fpn_coco.py')
VITDET_CONFIG = os.path.join(DET, 'vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py')
VSSM_SEG_CONFIG = os.path.join(SEG, 'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
VIM_SEG_CONFIG = os.path.join(SEG, 'upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py')
MASK2FORMER_CONFIG = os.path.join(SEG, 'mask2former_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')

VSSM_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) gives 3 maps of [192, 384, 768] channels '
              '(stages 1, 2, 3)')
VSSM_SEG_FIX = ['model.decode_head.in_index=[0,1,2]', 'model.decode_head.in_channels=[192,384,768]']
VIM_GIVES = 'model.backbone (MM_LocalVim, out_indices [9, 19]) gives 2 maps of [192, 192] channels (layers 9, 19)'

REFUSALS = [
    ('detection', FPN_CONFIG, ['model.backbone.out_indices=(1,2,3)'],
     f'model.neck (FPN) takes 4 maps of in_channels [96, 192, 384, 768], but {VSSM_GIVES}: set --cfg-options '
     f'model.neck.in_channels=[192,384,768]'),
    ('detection', VITDET_CONFIG, ['model.backbone.out_indices=[9,19]'],
     f'model.neck (SimpleFPN) takes one map (of backbone_channel 192 channels), but {VIM_GIVES}: set --cfg-options '
     f'model.backbone.out_indices=[19]'),
    ('detection', VITDET_CONFIG, ['model.backbone.embed_dim=384'],
     'model.neck (SimpleFPN) takes one map of backbone_channel 192 channels, but model.backbone (MM_LocalVim, '
     'out_indices [19]) gives 1 map of [384] channels (layer 19): set --cfg-options model.neck.backbone_channel=384 '
     'model.neck.in_channels=[96,192,384,384]'),
    # mmdet's MM_LocalVim gives its one map bare: FPN counted the batch's images as maps
    ('detection', VITDET_CONFIG, ['model.neck.type=FPN', 'model.neck.in_channels=[192]'],
     "model.neck (FPN) takes a list of maps, but model.backbone (MM_LocalVim, out_indices [19]) gives 1 map of [192] "
     "channels (layer 19), and mmdet's MM_LocalVim passes one map on bare (as SimpleFPN takes it): give "
     "model.backbone.out_indices two or more layers (and model.neck.in_channels one entry per layer), or use "
     "SimpleFPN"),
    # the neck fitted, the heads still expect stage 0's stride-4 map first
    ('detection', FPN_CONFIG, ['model.backbone.out_indices=(1,2,3)', 'model.neck.in_channels=[192,384,768]'],
     'model.rpn_head.anchor_generator.strides is [4, 8, 16, 32, 64] (and 2 more stride settings), but model.neck '
     '(FPN) gives maps of strides [8, 16, 32, 64, 128], as model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) '
     'gives 3 maps of strides [8, 16, 32] (stages 1, 2, 3): set --cfg-options '
     'model.rpn_head.anchor_generator.strides=[8,16,32,64,128] '
     'model.roi_head.bbox_roi_extractor.featmap_strides=[8,16,32,64] '
     'model.roi_head.mask_roi_extractor.featmap_strides=[8,16,32,64]'),
    ('detection', VITDET_CONFIG, ['model.backbone.patch_size=8'],
     'model.rpn_head.anchor_generator.strides is [4, 8, 16, 32, 64] (and 2 more stride settings), but model.neck '
     '(SimpleFPN) gives maps of strides [2, 4, 8, 16, 32], as model.backbone (MM_LocalVim, out_indices [19]) gives 1 '
     'map of strides [8] (layer 19): set --cfg-options model.rpn_head.anchor_generator.strides=[2,4,8,16,32] '
     'model.roi_head.bbox_roi_extractor.featmap_strides=[2,4,8,16] '
     'model.roi_head.mask_roi_extractor.featmap_strides=[2,4,8,16]'),
    ('segmentation', VSSM_SEG_CONFIG, ['model.backbone.out_indices=(1,2,3)'],
     f'model.decode_head (UPerHead) takes the maps in_index [0, 1, 2, 3] of in_channels [96, 192, 384, 768], but '
     f'{VSSM_GIVES}: set --cfg-options {" ".join(VSSM_SEG_FIX)}'),
    # the auxiliary head's stage 2 (384 channels) is now the second map
    ('segmentation', VSSM_SEG_CONFIG, ['model.backbone.out_indices=(1,2,3)', *VSSM_SEG_FIX],
     f'model.auxiliary_head (FCNHead) takes the map in_index 2 of in_channels 384, but {VSSM_GIVES}: set '
     f'--cfg-options model.auxiliary_head.in_index=1'),
    ('segmentation', VIM_SEG_CONFIG, ['model.backbone.out_indices=[9,19]'],
     f'model.decode_head (UPerHead) takes the maps in_index [0, 1, 2, 3] of in_channels [192, 192, 192, 192], but '
     f'{VIM_GIVES}: set --cfg-options model.decode_head.in_index=[0,1] model.decode_head.in_channels=[192,192]'),
    # of maps of one width, the deepest, as the head's index 3 of 4 took
    ('segmentation', VIM_SEG_CONFIG, ['model.backbone.out_indices=[9,19]', 'model.decode_head.in_index=[0,1]',
                                      'model.decode_head.in_channels=[192,192]'],
     f'model.auxiliary_head (FCNHead) takes the map in_index 3 of in_channels 192, but {VIM_GIVES}: set '
     f'--cfg-options model.auxiliary_head.in_index=1'),
    # Mask2Former takes every map (it has no in_index): its in_channels are those of the maps given
    ('segmentation', MASK2FORMER_CONFIG, ['model.backbone.out_indices=(1,2,3)'],
     f'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [96, 192, 384, 768], but {VSSM_GIVES}: set '
     f'--cfg-options model.decode_head.in_channels=[192,384,768]'),
]


@pytest.mark.parametrize('task, config, options, message', REFUSALS,
                         ids=['fpn', 'simple_fpn_maps', 'simple_fpn_width', 'fpn_bare_map', 'fpn_strides',
                              'simple_fpn_strides', 'upernet', 'upernet_aux', 'vim_upernet', 'vim_upernet_aux',
                              'mask2former'])
def test_a_neck_or_head_set_for_other_maps_is_refused_in_one_line_naming_the_keys(tmp_path, capsys, task, config,
                                                                                  options, message):
    require('mmdet' if task == 'detection' else 'mmseg')
    from classification.dense import launch

    with pytest.raises(SystemExit) as exit_info:
        launch.train_main(task, [config, '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options])
    assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (2, f'error: {message}')
    assert not (tmp_path / 'work').exists()     # before the run's folder is made


def test_a_tested_config_is_checked_too(tmp_path, capsys):
    require('mmseg')
    from classification.dense import launch

    with pytest.raises(SystemExit) as exit_info:
        launch.test_main('segmentation', [VSSM_SEG_CONFIG, 'ckpt.pth', '--work-dir', str(tmp_path / 'work'),
                                          '--cfg-options', 'model.backbone.out_indices=(1,2,3)'])
    assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (2, f'error: {REFUSALS[6][3]}')


def test_the_configs_as_shipped_pass_the_check():
    require('mmdet')
    require('mmseg')
    from mmengine.config import Config

    checked = []
    for path in DET_CONFIGS + SEG_CONFIGS:
        model = Config.fromfile(path).get('model')
        backbone = (model or {}).get('backbone') or {}
        if run_inputs.is_backbone(backbone):
            assert backbone_maps(run_inputs.type_name(backbone), backbone) is not None, path
            assert map_fit.neck_input_problem(model) is None, path
            assert map_fit.head_stride_problem(model) is None, path
            checked.append(os.path.basename(path))
    assert len(checked) == len(DET_CONFIGS) + len(SEG_CONFIGS) - 1     # all but the LSJ base


def _problem(model) -> str | None:
    """The line the tools stop on for ``model``, as launch checks it."""
    return map_fit.neck_input_problem(model) or map_fit.head_stride_problem(model)


def _follow_advice(cfg) -> list:
    """Apply the checks' advice to ``cfg`` until they have none; the problems met, in order."""
    problems = []
    while _problem(cfg.model) and len(problems) < 4:
        problems.append(_problem(cfg.model))
        apply_advice(cfg, problems[-1])
    return problems


def _measured_strides(maps, image_hw) -> list:
    """The stride of each NCHW map of an ``image_hw`` input (its height over the map's), asserted square."""
    strides = [(image_hw[0] / m.shape[-2], image_hw[1] / m.shape[-1]) for m in maps]
    assert all(h == w for h, w in strides), strides
    return [h for h, _ in strides]


def test_the_advised_options_make_an_upernet_that_trains():
    """Three stages of a narrow LocalVMamba into UperNet with the config's heads, fitted by the advice alone."""
    require('mmseg')
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    model = copy.deepcopy(Config.fromfile(VSSM_SEG_CONFIG).model)
    model['backbone'] = dict(tiny_vssm_backbone(model['backbone'], dims=16), out_indices=(1, 2, 3))
    model['decode_head']['channels'] = 16
    model['auxiliary_head']['channels'] = 8
    model['data_preprocessor']['size'] = IMAGE_HW
    cfg = Config(dict(model=model))
    assert [p.split(': set ')[1] for p in _follow_advice(cfg)] == [
        '--cfg-options model.decode_head.in_index=[0,1,2] model.decode_head.in_channels=[32,64,128]',
        '--cfg-options model.auxiliary_head.in_channels=128']
    init_default_scope('mmseg')
    segmentor = revert_sync_batchnorm(MODELS.build(cfg.model))
    batch = seg_batch()
    loss = loss_and_grads(segmentor, batch)
    assert loss.isfinite() and loss > 0


def test_the_advised_options_make_a_mask_rcnn_fpn_that_trains():
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    _, model = tiny_fpn_model_cfg()
    model['backbone']['out_indices'] = (1, 2, 3)
    cfg = Config(dict(model=model))
    assert [p.split(': set ')[1] for p in _follow_advice(cfg)] == [
        '--cfg-options model.neck.in_channels=[32,64,128]',
        '--cfg-options model.rpn_head.anchor_generator.strides=[8,16,32,64,128] '
        'model.roi_head.bbox_roi_extractor.featmap_strides=[8,16,32,64] '
        'model.roi_head.mask_roi_extractor.featmap_strides=[8,16,32,64]']
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    loss = loss_and_grads(detector, det_batch())
    assert loss.isfinite() and loss > 0
    # the advised strides are those of the maps the neck gives
    with torch.no_grad():
        maps = detector.extract_feat(torch.zeros(1, 3, 128, 256))
    assert _measured_strides(maps, (128, 256)) == [8, 16, 32, 64, 128]
    assert detector.rpn_head.prior_generator.strides == [(s, s) for s in (8, 16, 32, 64, 128)]
    assert detector.roi_head.bbox_roi_extractor.featmap_strides == [8, 16, 32, 64]


# ---------------------------------------------------------------------------------------------------------------------
# The check on config trees written out (no OpenMMLab package needed)

VSSM = dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1))


def test_a_list_of_auxiliary_heads_names_the_one_that_does_not_fit():
    model = dict(backbone=dict(VSSM, out_indices=(0, 1)), neck=None,
                 decode_head=dict(type='FCNHead', in_channels=16),     # in_index -1: the last map
                 auxiliary_head=[dict(type='FCNHead', in_index=0, in_channels=8),
                                 dict(type='FCNHead', in_index=1, in_channels=32)])
    assert map_fit.neck_input_problem(model) == (
        'model.auxiliary_head.1 (FCNHead) takes the map in_index 1 of in_channels 32, but model.backbone '
        '(MM_LocalVSSM, out_indices (0, 1)) gives 2 maps of [8, 16] channels (stages 0, 1): set --cfg-options '
        'model.auxiliary_head.1.in_channels=16')
    model['auxiliary_head'][1]['in_index'] = 5
    assert map_fit.neck_input_problem(model).endswith(
        'set --cfg-options model.auxiliary_head.1.in_index=1 model.auxiliary_head.1.in_channels=16')
    model['auxiliary_head'][1].update(in_index=-1, in_channels=16)
    assert map_fit.neck_input_problem(model) is None


def test_a_wrapped_model_is_named_by_its_key_and_unknown_necks_are_left_alone():
    """A TTA model's module; YOLOv3's neck, whose in_channels start at the deepest map, takes the maps reversed; the
    heads after a neck whose maps are not known (YOLOv3's without out_channels) are not judged, nor is a neck not
    known."""
    tta = dict(type='SegTTAModel', module=dict(backbone=dict(VSSM, out_indices=[1, 3]),
                                               neck=dict(type='FPN', in_channels=[16, 32])))
    assert map_fit.neck_input_problem(tta) == (
        'model.module.neck (FPN) takes 2 maps of in_channels [16, 32], but model.module.backbone (MM_LocalVSSM, '
        'out_indices [1, 3]) gives 2 maps of [16, 64] channels (stages 1, 3): set --cfg-options '
        'model.module.neck.in_channels=[16,64]')
    yolo = dict(backbone=dict(VSSM, out_indices=[1, 2]), neck=dict(type='YOLOV3Neck', in_channels=[32, 16]),
                decode_head=dict(type='FCNHead', in_index=7, in_channels=3))
    assert map_fit.neck_input_problem(yolo) is None
    unknown = dict(yolo, neck=dict(type='SSDNeck', in_channels=[3, 3]))
    assert map_fit.neck_input_problem(unknown) is None


def test_one_local_vim_map_reaches_an_fpn_of_mmseg_in_a_list():
    model = dict(backbone=dict(type='MM_LocalVim', embed_dim=32, depth=2, out_indices=[1]),
                 neck=dict(type='FPN', in_channels=[32]))
    assert map_fit.neck_input_problem(model) is None
    assert map_fit.neck_input_problem(model, bare_single_map=True).startswith('model.neck (FPN) takes a list of')
    model['backbone']['out_indices'] = [0, 1]
    model['neck']['in_channels'] = [32, 32]
    assert map_fit.neck_input_problem(model, bare_single_map=True) is None


def test_settings_the_backbone_refuses_are_left_to_it():
    """out_indices out of range, dims that do not fit depths: the backbone names them when it is built."""
    neck = dict(type='FPN', in_channels=[1])
    for backbone in (dict(VSSM, out_indices=(4,)), dict(VSSM, dims=[8, 16]), dict(VSSM, out_indices=(1, 1)),
                     dict(type='MM_LocalVim', depth=2, out_indices=[2])):
        assert backbone_maps(backbone['type'], backbone) is None
        assert map_fit.neck_input_problem(dict(backbone=backbone, neck=neck)) is None


def test_the_maps_follow_the_constructors_defaults_and_negative_indices():
    assert backbone_maps('MM_LocalVSSM', {}) == ([0, 1, 2, 3], [96, 192, 384, 768], 'stage', [4, 8, 16, 32])
    assert backbone_maps('MM_LocalVSSM', dict(dims=[8, 9, 10], depths=[1, 1, 1], out_indices=-1)) == (
        [2], [10], 'stage', [16])
    assert backbone_maps('MM_LocalVim', dict(out_indices=[-1, 0])) == ([0, 19], [192, 192], 'layer', [16, 16])
    assert backbone_maps('MM_LocalVim', dict(embed_dim=64, depth=4)) is None    # default out_indices past depth


# ---------------------------------------------------------------------------------------------------------------------
# The strides of the maps the necks give, and the heads' stride settings

NECKS = [   # (neck config, input map strides, the output strides neck_strides gives)
    (dict(type='FPN', in_channels=[4, 8, 16, 32], out_channels=8, num_outs=5), [4, 8, 16, 32],
     [4, 8, 16, 32, 64]),
    (dict(type='FPN', in_channels=[4, 8, 16, 32], out_channels=8, start_level=1, add_extra_convs='on_input',
          num_outs=5), [4, 8, 16, 32], [8, 16, 32, 64, 128]),     # RetinaNet's
    (dict(type='FPN', in_channels=[4, 8, 16, 32], out_channels=8, start_level=1, end_level=2, num_outs=2),
     [4, 8, 16, 32], [8, 16]),
    (dict(type='PAFPN', in_channels=[8, 16, 32], out_channels=8, num_outs=4), [8, 16, 32], [8, 16, 32, 64]),
    (dict(type='ChannelMapper', in_channels=[8, 16, 32], out_channels=8, num_outs=4), [8, 16, 32],
     [8, 16, 32, 64]),
    (dict(type='ChannelMapper', in_channels=[8, 16], out_channels=8), [16, 16], [16, 16]),
    (dict(type='SimpleFPN', backbone_channel=16, in_channels=[4, 8, 16, 16], out_channels=8, num_outs=5,
          norm_cfg=dict(type='LN2d')), [16],
     [4, 8, 16, 32, 64]),
]


@pytest.mark.parametrize('neck, strides, expected', NECKS,
                         ids=['fpn', 'fpn_start_level', 'fpn_end_level', 'pafpn', 'channel_mapper_extra',
                              'channel_mapper', 'simple_fpn'])
def test_neck_strides_are_those_of_the_maps_mmdets_necks_give(neck, strides, expected):
    require('mmdet')
    import detection.local_mamba  # noqa: F401  (SimpleFPN)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    assert map_fit.neck_strides(neck, strides) == expected
    init_default_scope('mmdet')
    built = MODELS.build(copy.deepcopy(neck)).eval()
    image_hw = (256, 512)
    widths = [neck['backbone_channel']] if neck['type'] == 'SimpleFPN' else neck['in_channels']
    inputs = [torch.zeros(1, c, image_hw[0] // s, image_hw[1] // s) for c, s in zip(widths, strides)]
    with torch.no_grad():
        maps = built(inputs[0] if neck['type'] == 'SimpleFPN' else inputs)
    assert _measured_strides(maps, image_hw) == expected


def test_necks_and_settings_not_known_are_left_alone():
    fpn = dict(type='FPN', in_channels=[4, 8], num_outs=5)
    assert map_fit.neck_strides(dict(fpn, num_outs=1), [4, 8]) is None       # FPN refuses fewer outputs
    assert map_fit.neck_strides(dict(fpn, start_level=2), [4, 8]) is None
    assert map_fit.neck_strides(dict(fpn, num_outs=None), [4, 8]) is None
    assert map_fit.neck_strides(dict(type='SSDNeck', in_channels=[4, 8]), [4, 8]) is None
    assert map_fit.neck_strides(dict(type='SimpleFPN', num_outs=4), [14]) is None     # not a multiple of 4


def _detector(strides, **settings) -> dict:
    """A two-stage detector's config tree: our backbone, an FPN, an RPN anchor generator and RoI extractors."""
    extractor = dict(type='SingleRoIExtractor', featmap_strides=strides[:4])
    model = dict(backbone=dict(VSSM, out_indices=(0, 1, 2, 3)),
                 neck=dict(type='FPN', in_channels=[8, 16, 32, 64], num_outs=5),
                 rpn_head=dict(type='RPNHead', anchor_generator=dict(type='AnchorGenerator', strides=strides)),
                 roi_head=dict(type='CascadeRoIHead', bbox_roi_extractor=[dict(extractor), dict(extractor)],
                               mask_roi_extractor=dict(extractor)))
    model.update(settings)
    return model


def test_each_stride_setting_of_the_heads_is_checked_and_fitted():
    fits = [4, 8, 16, 32, 64]
    assert map_fit.head_stride_problem(_detector(fits)) is None
    assert map_fit.head_stride_problem(_detector([(s, s) for s in fits])) is None     # mmdet's (w, h) form
    model = _detector(fits)
    model['roi_head']['bbox_roi_extractor'][1]['featmap_strides'] = [4, 8, 16, 16]
    assert map_fit.head_stride_problem(model) == (
        'model.roi_head.bbox_roi_extractor.1.featmap_strides is [4, 8, 16, 16], but model.neck (FPN) gives maps of '
        'strides [4, 8, 16, 32, 64], as model.backbone (MM_LocalVSSM, out_indices (0, 1, 2, 3)) gives 4 maps of '
        'strides [4, 8, 16, 32] (stages 0, 1, 2, 3): set --cfg-options '
        'model.roi_head.bbox_roi_extractor.1.featmap_strides=[4,8,16,32]')
    htc = _detector(fits)   # HTC's semantic RoIs are pooled from its semantic head's stride-8 map
    htc['roi_head']['semantic_roi_extractor'] = dict(type='SingleRoIExtractor', featmap_strides=[8])
    assert map_fit.head_stride_problem(htc) is None
    model = _detector([4, 8, 16, 32])   # a level short: mmdet's anchor generator asserts on it
    assert map_fit.head_stride_problem(model).startswith(
        'model.rpn_head.anchor_generator.strides is [4, 8, 16, 32], but ')
    model['backbone']['patch_size'] = 2
    assert map_fit.head_stride_problem(model).endswith(
        'set --cfg-options model.rpn_head.anchor_generator.strides=[2,4,8,16,32] '
        'model.roi_head.bbox_roi_extractor.0.featmap_strides=[2,4,8,16] '
        'model.roi_head.bbox_roi_extractor.1.featmap_strides=[2,4,8,16] '
        'model.roi_head.mask_roi_extractor.featmap_strides=[2,4,8,16]')


def test_a_single_stage_prior_generator_and_a_detector_without_a_neck():
    retina = dict(backbone=dict(VSSM, out_indices=(1, 2, 3)),
                  neck=dict(type='FPN', in_channels=[16, 32, 64], start_level=1, num_outs=5),
                  bbox_head=dict(type='FCOSHead', prior_generator=dict(type='MlvlPointGenerator',
                                                                       strides=[8, 16, 32, 64, 128])))
    assert map_fit.head_stride_problem(retina) == (
        'model.bbox_head.prior_generator.strides is [8, 16, 32, 64, 128], but model.neck (FPN) gives maps of strides '
        '[16, 32, 64, 128, 256], as model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) gives 3 maps of strides '
        '[8, 16, 32] (stages 1, 2, 3): set --cfg-options model.bbox_head.prior_generator.strides=[16,32,64,128,256]')
    bare = dict(backbone=dict(VSSM, out_indices=(2, 3)), neck=None,
                rpn_head=dict(anchor_generator=dict(type='AnchorGenerator', strides=[16, 32])))
    assert map_fit.head_stride_problem(bare) is None
    bare['rpn_head']['anchor_generator']['strides'] = [16, 16]
    assert map_fit.head_stride_problem(bare).endswith(
        'set --cfg-options model.rpn_head.anchor_generator.strides=[16,32]')
    bare['rpn_head']['anchor_generator']['strides'] = [(16, 8), (32, 16)]    # not square: left to mmdet
    assert map_fit.head_stride_problem(bare) is None
    fcos = dict(retina, bbox_head=dict(type='mmdet.FCOSHead', strides=[8, 16, 32, 64, 128]))
    assert map_fit.head_stride_problem(fcos).endswith('set --cfg-options model.bbox_head.strides=[16,32,64,128,256]')
    reppoints = dict(retina, bbox_head=dict(type='RepPointsHead', point_strides=[16, 32, 64, 128, 256]))
    assert map_fit.head_stride_problem(reppoints) is None
    solo = dict(retina, bbox_head=None, mask_head=dict(type='SOLOHead', strides=[8, 8, 16, 32, 32]))
    assert map_fit.head_stride_problem(solo) is None    # scale ranges of its grids, not map strides
    unknown = dict(_detector([8, 16]), neck=dict(type='SSDNeck', in_channels=[8, 16, 32, 64]))
    assert map_fit.head_stride_problem(unknown) is None


def test_the_backbone_strides_follow_its_patch_size():
    assert backbone_maps('MM_LocalVSSM', dict(out_indices=(1, 3))).strides == [8, 32]
    assert backbone_maps('MM_LocalVSSM', dict(patch_size=2)).strides == [2, 4, 8, 16]
    assert backbone_maps('MM_LocalVim', dict(out_indices=[4, 19])).strides == [16, 16]
    assert backbone_maps('MM_LocalVim', dict(out_indices=[19], patch_size=(16, 16))).strides is None


MMDET_DETECTORS = [   # mmdet's own configs of ResNet + FPN / ChannelMapper detectors, and the heads' stride keys
    ('retinanet/retinanet_r50_fpn_1x_coco.py', ['model.bbox_head.anchor_generator.strides']),
    ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', ['model.bbox_head.strides']),
    ('guided_anchoring/ga-retinanet_r50_fpn_1x_coco.py',
     ['model.bbox_head.approx_anchor_generator.strides', 'model.bbox_head.square_anchor_generator.strides']),
    ('htc/htc_r50_fpn_1x_coco.py', ['model.rpn_head.anchor_generator.strides',
                                    'model.roi_head.bbox_roi_extractor.featmap_strides',
                                    'model.roi_head.mask_roi_extractor.featmap_strides']),
    ('reppoints/reppoints-moment_r50_fpn_1x_coco.py', ['model.bbox_head.point_strides']),
    ('vfnet/vfnet_r50_fpn_1x_coco.py', ['model.bbox_head.strides']),
    ('grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py',
     ['model.rpn_head.anchor_generator.strides', 'model.roi_head.bbox_roi_extractor.featmap_strides',
      'model.roi_head.grid_roi_extractor.featmap_strides']),
    ('sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py', ['model.roi_head.bbox_roi_extractor.featmap_strides']),
    ('yolact/yolact_r50_1xb8-55e_coco.py', []),     # its anchor strides are not ints (550 / 69, ...): left alone
    ('detr/detr_r50_8xb2-150e_coco.py', []),        # no strides
]


@pytest.mark.parametrize('config, keys', MMDET_DETECTORS, ids=[c.split('/')[0] for c, _ in MMDET_DETECTORS])
def test_mmdets_own_detectors_pass_on_maps_of_their_strides_and_are_fitted_on_others(config, keys):
    """ResNet swapped for LocalVMamba, whose stages have ResNet's strides (4 .. 32) with 4-pixel patches: no line;
    with 8-pixel patches every stride doubles: the line's --cfg-options name exactly the heads' stride settings."""
    require('mmdet')
    import mmdet
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', config))
    resnet = cfg.model['backbone']
    assert run_inputs.type_name(resnet) == 'ResNet' and 'strides' not in resnet
    cfg.model['backbone'] = dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1),
                                 out_indices=tuple(resnet.get('out_indices', (0, 1, 2, 3))))
    assert map_fit.head_stride_problem(cfg.model) is None
    cfg.model['backbone']['patch_size'] = 8
    problem = map_fit.head_stride_problem(cfg.model)
    fixed = [item.split('=')[0] for item in problem.split('set --cfg-options ')[1].split()] if problem else []
    assert fixed == keys
    if problem:
        apply_advice(cfg, problem)
        assert map_fit.head_stride_problem(cfg.model) is None
