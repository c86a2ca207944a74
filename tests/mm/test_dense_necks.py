"""The det/seg tools' neck check beyond FPN: the other necks of mmdet and mmseg that our backbones may feed (FPN's kin,
BFP, DyHead, SSH, YOLO's, the last-map necks, SSD's, DetectoRS's RFP, ReID's GlobalAveragePooling, mmseg's ViT
necks and ICNet's) and lists of necks, where each neck takes the maps the one before gives, and the segmentation heads
and SSD's and YOLOv3's detection heads after a neck, which take the maps it gives. A neck or a head set for other
maps ends in one line whose --cfg-options fit it; the channels and strides the check follows through a neck are those
of the maps mmdet's and mmseg's built necks give."""
import copy
import os

import pytest
import torch

from conftest import (IMAGE_HW, apply_advice, det_config, loss_and_grads, our_maps, require, seg_batch, seg_config,
                      tiny_vim_backbone, tiny_vssm_backbone)

from classification.dense import map_fit
from classification.dense.neck_maps import NeckMaps, neck_gives

VSSM = dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1), out_indices=(1, 2, 3))   # 16, 32, 64 channels
VSSM_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) gives 3 maps of [16, 32, 64] channels '
              '(stages 1, 2, 3)')
VIM = dict(type='MM_LocalVim', embed_dim=32, depth=4, out_indices=[1, 3])
VIM_GIVES = 'model.backbone (MM_LocalVim, out_indices [1, 3]) gives 2 maps of [32, 32] channels (layers 1, 3)'
VIM1 = dict(VIM, out_indices=[3])     # one map (in a list: mmseg's)
VIM4 = dict(VIM, out_indices=[0, 1, 2, 3])
VIM4_GIVES = ('model.backbone (MM_LocalVim, out_indices [0, 1, 2, 3]) gives 4 maps of [32, 32, 32, 32] channels '
              '(layers 0, 1, 2, 3)')
RESNET_WIDTHS = [96, 192, 384, 768]
FPN_GIVES = 'model.neck.0 (FPN) gives 5 maps of [32, 32, 32, 32, 32] channels'
ONE_WIDTH = "it takes maps of one width: put a neck that gives them before it (neck=[dict(type='FPN', ...), "


def _fpn(in_channels) -> dict:
    return dict(type='FPN', in_channels=in_channels, out_channels=32, num_outs=5)


SSD = dict(type='SSDNeck', in_channels=(512, 1024), out_channels=(512, 1024, 8, 8), level_strides=(2, 2),
           level_paddings=(1, 1))
LIST_NECKS = ['FPN_DropBlock', 'FPG', 'FPN_CARAFE', 'NASFPN', 'NASFCOS_FPN', 'HRFPN', 'YOLOXPAFPN', 'CSPNeXtPAFPN']

# (backbone, the neck as it fits, the neck set for other maps, the line for it; with a fix, the fix fits it)
REFUSALS = {
    **{kind.lower(): (VSSM, dict(type=kind, in_channels=[16, 32, 64]), dict(type=kind, in_channels=RESNET_WIDTHS),
                      f'model.neck ({kind}) takes 4 maps of in_channels {RESNET_WIDTHS}, but {VSSM_GIVES}: set '
                      f'--cfg-options model.neck.in_channels=[16,32,64]') for kind in LIST_NECKS},
    'mlaneck': (VIM, dict(type='MLANeck', in_channels=[32, 32]), dict(type='MLANeck', in_channels=[768, 768]),
                f'model.neck (MLANeck) takes 2 maps of in_channels [768, 768], but {VIM_GIVES}: set --cfg-options '
                f'model.neck.in_channels=[32,32]'),
    'jpu_tuple': (VSSM, dict(type='JPU', in_channels=(16, 32, 64)), dict(type='JPU', in_channels=(512, 1024, 2048)),
                  f'model.neck (JPU) takes 3 maps of in_channels [512, 1024, 2048], but {VSSM_GIVES}: set '
                  f'--cfg-options model.neck.in_channels=(16,32,64)'),
    'ssh': (VSSM, dict(type='SSH', num_scales=3, in_channels=[16, 32, 64], out_channels=[8, 8, 8]),
            dict(type='SSH', num_scales=3, in_channels=[8, 16, 32], out_channels=[8, 8, 8]),
            f'model.neck (SSH) takes 3 maps of in_channels [8, 16, 32], but {VSSM_GIVES}: set --cfg-options '
            f'model.neck.in_channels=[16,32,64]'),
    'ssh_scales': (VSSM, None, dict(type='SSH', num_scales=4, in_channels=[8, 16, 32, 64], out_channels=[8] * 4),
                   f'model.neck (SSH) takes 4 maps of in_channels [8, 16, 32, 64], but {VSSM_GIVES}: set --cfg-options '
                   f'model.neck.num_scales=3 model.neck.in_channels=[16,32,64] model.neck.out_channels=[8,8,8]'),
    'ssh_scales_widths': (VSSM, None, dict(type='SSH', num_scales=2, in_channels=[8, 16], out_channels=[8, 16]),
                          f'model.neck (SSH) takes 2 maps of in_channels [8, 16], but {VSSM_GIVES}: set '
                          f'model.neck.num_scales=3, model.neck.in_channels=[16,32,64] and model.neck.out_channels to '
                          f'3 widths (one per map)'),
    'yolov3': (VSSM, dict(type='YOLOV3Neck', num_scales=3, in_channels=[64, 32, 16], out_channels=[32, 16, 8]),
               dict(type='YOLOV3Neck', num_scales=3, in_channels=[16, 32, 64], out_channels=[32, 16, 8]),
               f'model.neck (YOLOV3Neck) takes 3 maps of in_channels [16, 32, 64] (the deepest first), but '
               f'{VSSM_GIVES}: set --cfg-options model.neck.in_channels=[64,32,16]'),
    'yolov3_scales': (VSSM, None, dict(type='YOLOV3Neck', num_scales=2, in_channels=[64, 32], out_channels=[32, 16]),
                      f'model.neck (YOLOV3Neck) takes 2 maps of in_channels [64, 32] (the deepest first), but '
                      f'{VSSM_GIVES}: set model.neck.num_scales=3, model.neck.in_channels=[64,32,16] and '
                      f'model.neck.out_channels to 3 widths (one per map)'),
    'bfp': (VIM, dict(type='BFP', in_channels=32, num_levels=2, refine_level=1),
            dict(type='BFP', in_channels=256, num_levels=5, refine_level=2),
            f'model.neck (BFP) takes 5 maps of in_channels 256, but {VIM_GIVES}: set --cfg-options '
            f'model.neck.in_channels=32 model.neck.num_levels=2 model.neck.refine_level=1'),
    'bfp_widths': (VSSM, None, dict(type='BFP', in_channels=16, num_levels=3),
                   f"model.neck (BFP) takes 3 maps of in_channels 16, but {VSSM_GIVES}: {ONE_WIDTH}"
                   f"dict(type='BFP', ...)])"),
    'dyhead': (VIM1, dict(type='DyHead', in_channels=32), dict(type='DyHead', in_channels=256),
               'model.neck (DyHead) takes maps of in_channels 256, but model.backbone (MM_LocalVim, out_indices [3]) '
               'gives 1 map of [32] channels (layer 3): set --cfg-options model.neck.in_channels=32'),
    'feature2pyramid': (VIM4, dict(type='Feature2Pyramid', embed_dim=32), dict(type='Feature2Pyramid', embed_dim=192),
                        f'model.neck (Feature2Pyramid) takes 4 maps of embed_dim 192 channels (one per rescales '
                        f'entry), but {VIM4_GIVES}: set --cfg-options model.neck.embed_dim=32'),
    'feature2pyramid_maps': (VIM, None, dict(type='Feature2Pyramid', embed_dim=32),
                             f'model.neck (Feature2Pyramid) takes 4 maps of embed_dim 32 channels (one per rescales '
                             f'entry), but {VIM_GIVES}: give model.backbone.out_indices 4 entries'),
    'multi_level_neck': (VIM4, dict(type='MultiLevelNeck', in_channels=[32] * 4, out_channels=8),
                         dict(type='MultiLevelNeck', in_channels=[768] * 4, out_channels=8),
                         f'model.neck (MultiLevelNeck) takes 4 maps of in_channels [768, 768, 768, 768], but '
                         f'{VIM4_GIVES}: set --cfg-options model.neck.in_channels=[32,32,32,32]'),
    # it resizes the map i by scales[i]: two maps for four scales end in an IndexError, whatever its in_channels
    'multi_level_neck_maps': (VIM, None, dict(type='MultiLevelNeck', in_channels=[32, 32], out_channels=8),
                              f'model.neck (MultiLevelNeck) takes one map, or 4 (one per scales entry: [0.5, 1, 2, '
                              f'4]), but {VIM_GIVES}: give model.backbone.out_indices 1 or 4 entries, or set '
                              f'model.neck.scales to 2 entries'),
    'dilated_encoder': (VSSM, dict(type='DilatedEncoder', in_channels=64),
                        dict(type='DilatedEncoder', in_channels=2048),
                        f'model.neck (DilatedEncoder) takes the last map, of in_channels 2048, but {VSSM_GIVES}: set '
                        f'--cfg-options model.neck.in_channels=64'),
    'ct_resnet': (VSSM, dict(type='CTResNetNeck', in_channels=64), dict(type='CTResNetNeck', in_channels=512),
                  f'model.neck (CTResNetNeck) takes the last map, of in_channels 512, but {VSSM_GIVES}: set '
                  f'--cfg-options model.neck.in_channels=64'),
    'fpn_then_bfp': (VSSM, [_fpn([16, 32, 64]), dict(type='BFP', in_channels=32, num_levels=5)],
                     [_fpn([16, 32, 64]), dict(type='BFP', in_channels=256, num_levels=5)],
                     f'model.neck.1 (BFP) takes 5 maps of in_channels 256, but {FPN_GIVES}: set --cfg-options '
                     f'model.neck.1.in_channels=32'),
    'fpn_then_dyhead': (VSSM, [_fpn([16, 32, 64]), dict(type='DyHead', in_channels=32)],
                        [_fpn([16, 32, 64]), dict(type='DyHead', in_channels=256)],
                        f'model.neck.1 (DyHead) takes maps of in_channels 256, but {FPN_GIVES}: set --cfg-options '
                        f'model.neck.1.in_channels=32'),
    'ssd': (VSSM, dict(SSD, in_channels=(16, 32, 64), out_channels=(16, 32, 64, 8, 8)), SSD,
            f'model.neck (SSDNeck) takes 2 maps of in_channels [512, 1024], but {VSSM_GIVES}: set --cfg-options '
            f'model.neck.in_channels=(16,32,64) model.neck.out_channels=(16,32,64,8,8)'),
    'icneck': (VSSM, dict(type='ICNeck', in_channels=[16, 32, 64]), dict(type='ICNeck'),
               f'model.neck (ICNeck) takes 3 maps of in_channels [64, 256, 256], but {VSSM_GIVES}: set --cfg-options '
               f'model.neck.in_channels=[16,32,64]'),
    'icneck_maps': (VIM, None, dict(type='ICNeck', in_channels=[32] * 3),
                    f'model.neck (ICNeck) takes 3 maps of in_channels [32, 32, 32], but {VIM_GIVES}: give '
                    f'model.backbone.out_indices 3 entries'),
    'rfp': (VSSM, None, dict(type='RFP', in_channels=[16, 32, 64], out_channels=8, num_outs=5, rfp_steps=2,
                             rfp_backbone=dict(type='DetectoRS_ResNet'), aspp_out_channels=4),
            f"model.neck (RFP) takes the image before the maps (DetectoRS_ResNet with output_img=True gives it) and "
            f"runs its rfp_backbone on it, but {VSSM_GIVES}: use an FPN in its place (type='FPN', "
            f"in_channels=[16,32,64], without RFP's rfp_steps, rfp_backbone and aspp_out_channels)"),
    'global_average_pooling': (VSSM, [_fpn([16, 32, 64]), dict(type='GlobalAveragePooling')],
                               dict(type='GlobalAveragePooling'),
                               f"model.neck (GlobalAveragePooling) pools a tuple of maps or one bare map, but "
                               f"{VSSM_GIVES}, as a list: put a neck that gives a tuple of maps before it "
                               f"(neck=[dict(type='FPN', ...), dict(type='GlobalAveragePooling', ...)])"),
    # FPN reads only the entries start_level to end_level, and the line sets them all
    'fpn_after_its_start_level': (VSSM, None, dict(_fpn([999, 32, 999]), num_outs=3, start_level=1),
                                  f'model.neck (FPN) takes 3 maps of in_channels [999, 32, 999], but {VSSM_GIVES}: set '
                                  f'--cfg-options model.neck.in_channels=[16,32,64]'),
    'fpn_of_a_list': (VSSM, None, [_fpn(RESNET_WIDTHS), dict(type='DyHead', in_channels=32)],
                      f'model.neck.0 (FPN) takes 4 maps of in_channels {RESNET_WIDTHS}, but {VSSM_GIVES}: set '
                      f'--cfg-options model.neck.0.in_channels=[16,32,64]'),
}


@pytest.mark.parametrize('backbone, fits, misfit, message', REFUSALS.values(), ids=REFUSALS.keys())
def test_a_neck_set_for_other_maps_is_refused_in_one_line_whose_options_fit_it(backbone, fits, misfit, message):
    require('mmengine')
    from mmengine.config import Config

    if fits is not None:
        assert map_fit.neck_input_problem(dict(backbone=backbone, neck=fits)) is None
    cfg = Config(dict(model=dict(backbone=backbone, neck=copy.deepcopy(misfit))))
    assert map_fit.neck_input_problem(cfg.model) == message
    if 'set --cfg-options' in message:
        apply_advice(cfg, message)
        assert map_fit.neck_input_problem(cfg.model) is None
    if fits is not None and 'set --cfg-options' in message:     # the advice gives what the fitting config holds
        fitting = fits[-1] if isinstance(fits, list) else fits
        fitted = cfg.model.neck[-1] if isinstance(fits, list) else cfg.model.neck
        assert {key: fitted[key] for key in fitting} == fitting


MLN = dict(type='MultiLevelNeck', in_channels=[32] * 4, out_channels=16, scales=[4, 2, 1, 0.5])
MLN_GIVES = 'model.neck (MultiLevelNeck) gives 4 maps of [16, 16, 16, 16] channels'
UPER = dict(type='UPerHead', in_index=[0, 1, 2, 3], in_channels=[768] * 4)
JPU = dict(type='JPU', in_channels=(16, 32, 64), mid_channels=2)     # the first maps, then 2 x 4 dilations = 8
JPU_GIVES = 'model.neck (JPU) gives 3 maps of [16, 32, 8] channels'
FPN_THEN_MLN = [dict(type='FPN', in_channels=[16, 32, 64], out_channels=8, num_outs=3),
                dict(type='MultiLevelNeck', in_channels=[8] * 3, out_channels=4, scales=[1, 1, 1])]

# (backbone, neck, heads set for other maps than the neck gives, the line; its fix is the heads' fit)
HEAD_REFUSALS = {
    'multi_level_neck': (VIM4, MLN, dict(decode_head=UPER, auxiliary_head=dict(type='FCNHead', in_channels=16)),
                         f'model.decode_head (UPerHead) takes the maps in_index [0, 1, 2, 3] of in_channels [768, 768, '
                         f'768, 768], but {MLN_GIVES}: set --cfg-options model.decode_head.in_channels=[16,16,16,16]'),
    'multi_level_neck_aux': (VIM4, MLN, dict(decode_head=dict(UPER, in_channels=[16] * 4),
                                             auxiliary_head=dict(type='FCNHead', in_index=3, in_channels=768)),
                             f'model.auxiliary_head (FCNHead) takes the map in_index 3 of in_channels 768, but '
                             f'{MLN_GIVES}: set --cfg-options model.auxiliary_head.in_channels=16'),
    # in_channels 64, as the backbone's last map: JPU replaces that map by its own, of 8 channels
    'jpu': (VSSM, JPU, dict(decode_head=dict(type='PSPHead', in_index=2, in_channels=64),
                            auxiliary_head=dict(type='FCNHead', in_index=1, in_channels=32)),
            f'model.decode_head (PSPHead) takes the map in_index 2 of in_channels 64, but {JPU_GIVES}: set '
            f'--cfg-options model.decode_head.in_channels=8'),
    'jpu_aux': (VSSM, JPU, dict(decode_head=dict(type='PSPHead', in_index=2, in_channels=8),
                                auxiliary_head=dict(type='FCNHead', in_index=1, in_channels=1024)),
                f'model.auxiliary_head (FCNHead) takes the map in_index 1 of in_channels 1024, but {JPU_GIVES}: set '
                f'--cfg-options model.auxiliary_head.in_channels=32'),
    'feature2pyramid': (VIM4, dict(type='Feature2Pyramid', embed_dim=32), dict(decode_head=UPER),
                        'model.decode_head (UPerHead) takes the maps in_index [0, 1, 2, 3] of in_channels [768, 768, '
                        '768, 768], but model.neck (Feature2Pyramid) gives 4 maps of [32, 32, 32, 32] channels: set '
                        '--cfg-options model.decode_head.in_channels=[32,32,32,32]'),
    'mla_neck': (VIM4, dict(type='MLANeck', in_channels=[32] * 4, out_channels=8),
                 dict(decode_head=dict(type='SETRMLAHead', in_index=(0, 1, 2, 3), in_channels=(256,) * 4)),
                 'model.decode_head (SETRMLAHead) takes the maps in_index (0, 1, 2, 3) of in_channels (256, 256, 256, '
                 '256), but model.neck (MLANeck) gives 4 maps of [8, 8, 8, 8] channels: set --cfg-options '
                 'model.decode_head.in_channels=[8,8,8,8]'),
    'fpn_then_multi_level_neck': (VSSM, FPN_THEN_MLN, dict(decode_head=dict(type='FCNHead', in_channels=8)),
                                  'model.decode_head (FCNHead) takes the map in_index -1 of in_channels 8, but '
                                  'model.neck.1 (MultiLevelNeck) gives 3 maps of [4, 4, 4] channels: set '
                                  '--cfg-options model.decode_head.in_channels=4'),
}


@pytest.mark.parametrize('backbone, neck, heads, message', HEAD_REFUSALS.values(), ids=HEAD_REFUSALS.keys())
def test_a_segmentation_head_after_a_neck_is_judged_by_the_maps_the_neck_gives(backbone, neck, heads, message):
    require('mmengine')
    from mmengine.config import Config

    cfg = Config(dict(model=dict(backbone=backbone, neck=copy.deepcopy(neck), **copy.deepcopy(heads))))
    assert map_fit.neck_input_problem(cfg.model) == message
    apply_advice(cfg, message)
    assert map_fit.neck_input_problem(cfg.model) is None


def test_heads_after_a_neck_set_as_mmseg_refuses_or_of_maps_not_known_are_left_alone():
    """MultiLevelNeck of two maps for four scales is the neck's line, not the heads'; after SSDNeck (maps not known)
    and a MultiLevelNeck without out_channels (its width not known) the heads are not judged."""
    wrong_head = dict(type='FCNHead', in_index=7, in_channels=3)
    two_maps = dict(backbone=VIM, neck=dict(MLN, in_channels=[32, 32]), decode_head=wrong_head)
    assert map_fit.neck_input_problem(two_maps).startswith('model.neck (MultiLevelNeck) takes one map, or 4')
    for neck in (dict(type='SSDNeck', in_channels=[32] * 4), dict(type='MultiLevelNeck', in_channels=[32] * 4)):
        assert map_fit.neck_input_problem(dict(backbone=VIM4, neck=neck, decode_head=wrong_head)) is None


def test_mmdets_local_vim_passes_its_one_map_bare_to_no_neck_but_simple_fpn():
    model = dict(backbone=dict(VIM, out_indices=[3]), neck=dict(type='DyHead', in_channels=32))
    assert map_fit.neck_input_problem(model) is None
    assert map_fit.neck_input_problem(model, bare_single_map=True) == (
        "model.neck (DyHead) takes a list of maps, but model.backbone (MM_LocalVim, out_indices [3]) gives 1 map of "
        "[32] channels (layer 3), and mmdet's MM_LocalVim passes one map on bare (as SimpleFPN takes it): give "
        "model.backbone.out_indices two or more layers, or use SimpleFPN")
    model['neck'] = [dict(type='FPN', in_channels=[32], out_channels=8, num_outs=1), dict(type='DyHead')]
    assert map_fit.neck_input_problem(model, bare_single_map=True).startswith(
        'model.neck.0 (FPN) takes a list of maps, but model.backbone (MM_LocalVim, out_indices [3]) gives 1 map of '
        '[32] channels (layer 3), and ')


def test_necks_after_one_not_known_and_unknown_settings_are_left_alone():
    unknown_first = [dict(type='SSDNeck', in_channels=[16, 32, 64]), dict(type='DyHead', in_channels=3)]
    assert map_fit.neck_input_problem(dict(backbone=VSSM, neck=unknown_first)) is None
    odd_count = [_fpn([16, 32, 64]), dict(type='NASFCOS_FPN', in_channels=[32] * 5, start_level=0, num_outs=5),
                 dict(type='DyHead', in_channels=3)]   # NASFCOS_FPN's cells on five maps, not three: maps not known
    assert map_fit.neck_input_problem(dict(backbone=VSSM, neck=odd_count)) is None
    three_maps = [dict(type='ChannelMapper', in_channels=[16, 32, 64], out_channels=8),
                  dict(type='Feature2Pyramid', embed_dim=8)]
    assert map_fit.neck_input_problem(dict(backbone=VSSM, neck=three_maps)).endswith(
        'but model.neck.0 (ChannelMapper) gives 3 maps of [8, 8, 8] channels: give it 4 maps')
    assert map_fit.neck_strides(odd_count, [8, 16, 32]) is None
    assert map_fit.neck_strides(dict(type='NASFPN', in_channels=[8, 16, 32], num_outs=4), [8, 16, 32]) is None
    assert map_fit.neck_strides(dict(type='CTResNetNeck', num_deconv_filters=(8,), num_deconv_kernels=(3,)),
                                [32]) is None     # a kernel-3 deconvolution does not double its map
    assert map_fit.neck_strides(dict(type='HRFPN', in_channels=[8, 8]), [16, 16]) is None   # not doubling
    assert map_fit.neck_strides([], [8, 16]) is None


def test_a_list_after_simple_fpn_and_the_stride_line_of_a_list_name_each_neck():
    vitdet = dict(backbone=dict(VIM, out_indices=[3]),
                  neck=[dict(type='SimpleFPN', backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=16,
                             num_outs=5), dict(type='DyHead', in_channels=32)])
    assert map_fit.neck_input_problem(vitdet, bare_single_map=True) == (
        'model.neck.1 (DyHead) takes maps of in_channels 32, but model.neck.0 (SimpleFPN) gives 5 maps of '
        '[16, 16, 16, 16, 16] channels: set --cfg-options model.neck.1.in_channels=16')
    assert map_fit.neck_strides(vitdet['neck'], [16]) == [4, 8, 16, 32, 64]
    anchors = dict(type='AnchorGenerator', strides=[4, 8, 16, 32, 64])
    atss = dict(backbone=VSSM, neck=[_fpn([16, 32, 64]), dict(type='DyHead', in_channels=32)],
                bbox_head=dict(type='ATSSHead', anchor_generator=anchors))
    assert map_fit.head_stride_problem(atss) == (
        'model.bbox_head.anchor_generator.strides is [4, 8, 16, 32, 64], but model.neck (FPN, then DyHead) gives maps '
        'of strides [8, 16, 32, 64, 128], as model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) gives 3 maps of '
        'strides [8, 16, 32] (stages 1, 2, 3): '
        'set --cfg-options model.bbox_head.anchor_generator.strides=[8,16,32,64,128]')


def test_yoloxs_head_strides_are_those_of_its_neck():
    yolox = dict(backbone=VSSM, neck=dict(type='YOLOXPAFPN', in_channels=[16, 32, 64], out_channels=8),
                 bbox_head=dict(type='YOLOXHead', strides=(8, 16, 32)))
    assert map_fit.head_stride_problem(yolox) is None
    yolox['backbone'] = dict(VSSM, patch_size=8)
    assert map_fit.head_stride_problem(yolox).endswith('set --cfg-options model.bbox_head.strides=[16,32,64]')


# ---------------------------------------------------------------------------------------------------------------------
# The maps the check follows through a neck, against those of mmdet's and mmseg's built necks

BN = dict(type='BN')
FPG = dict(type='FPG', in_channels=[8, 16, 32, 64], out_channels=8, inter_channels=8, num_outs=5, stack_times=2,
           paths=['bu', 'bu'], start_level=1, add_extra_convs=True, norm_cfg=BN, same_down_trans=None,
           same_up_trans=dict(type='conv', kernel_size=3, stride=2, padding=1),
           across_lateral_trans=dict(type='conv', kernel_size=1),
           across_down_trans=dict(type='interpolation_conv', mode='nearest', kernel_size=3), across_up_trans=None,
           across_skip_trans=None, output_trans=dict(type='last_conv', kernel_size=3),
           skip_inds=[(0, 1), (0, 1), (0,), (0,), ()])
STRIDES4 = [4, 8, 16, 32]
STRIDES3 = [8, 16, 32]

BUILT_NECKS = {   # (scope, neck config, channels and strides of the maps it gets, strides of the maps it gives)
    'fpg': ('mmdet', FPG, ([8, 16, 32, 64], STRIDES4), [8, 16, 32, 64, 128]),
    'fpn_dropblock': ('mmdet', dict(type='FPN_DropBlock', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=5,
                                    start_level=1, add_extra_convs='on_input'), ([8, 16, 32, 64], STRIDES4),
                      [8, 16, 32, 64, 128]),
    'fpn_carafe': ('mmdet', dict(type='FPN_CARAFE', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=5,
                                 upsample_cfg=dict(type='nearest')), ([8, 16, 32, 64], STRIDES4),
                   [4, 8, 16, 32, 64]),
    'nasfpn': ('mmdet', dict(type='NASFPN', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=5, stack_times=1,
                             start_level=1, norm_cfg=BN), ([8, 16, 32, 64], STRIDES4), [8, 16, 32, 64, 128]),
    'nasfcos_fpn': ('mmdet', dict(type='NASFCOS_FPN', in_channels=[8, 16, 32, 64], out_channels=8, start_level=1,
                                  num_outs=5, norm_cfg=BN), ([8, 16, 32, 64], STRIDES4), [8, 16, 32, 64, 128]),
    'hrfpn': ('mmdet', dict(type='HRFPN', in_channels=[8, 16, 32, 64], out_channels=8), ([8, 16, 32, 64], STRIDES4),
              [4, 8, 16, 32, 64]),
    'bfp': ('mmdet', dict(type='BFP', in_channels=8, num_levels=3, refine_level=1), ([8, 8, 8], STRIDES3), STRIDES3),
    'dyhead': ('mmdet', dict(type='DyHead', in_channels=8, out_channels=16, num_blocks=1), ([8, 8, 8], STRIDES3),
               STRIDES3),
    'ssh': ('mmdet', dict(type='SSH', num_scales=3, in_channels=[8, 16, 32], out_channels=[8, 16, 32]),
            ([8, 16, 32], STRIDES3), STRIDES3),
    'yoloxpafpn': ('mmdet', dict(type='YOLOXPAFPN', in_channels=[8, 16, 32], out_channels=8, num_csp_blocks=1),
                   ([8, 16, 32], STRIDES3), STRIDES3),
    'cspnextpafpn': ('mmdet', dict(type='CSPNeXtPAFPN', in_channels=[8, 16, 32], out_channels=8, num_csp_blocks=1),
                     ([8, 16, 32], STRIDES3), STRIDES3),
    'yolov3': ('mmdet', dict(type='YOLOV3Neck', num_scales=3, in_channels=[32, 16, 8], out_channels=[16, 8, 4]),
               ([8, 16, 32], STRIDES3), [32, 16, 8]),
    'dilated_encoder': ('mmdet', dict(type='DilatedEncoder', in_channels=32, out_channels=8, block_mid_channels=4,
                                      num_residual_blocks=1, block_dilations=[2]), ([8, 16, 32], STRIDES3), [32]),
    'ct_resnet': ('mmdet', dict(type='CTResNetNeck', in_channels=32, num_deconv_filters=(16, 8),
                                num_deconv_kernels=(4, 4), use_dcn=False), ([8, 16, 32], STRIDES3), [8]),
    'fpn_then_bfp': ('mmdet', [dict(type='FPN', in_channels=[8, 16, 32], out_channels=8, start_level=1,
                                    add_extra_convs='on_output', num_outs=5),
                               dict(type='BFP', in_channels=8, num_levels=5)], ([8, 16, 32], STRIDES3),
                     [16, 32, 64, 128, 256]),
    'fpn_then_dyhead': ('mmdet', [dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16, start_level=1,
                                       add_extra_convs='on_output', num_outs=5),
                                  dict(type='DyHead', in_channels=16, out_channels=16, num_blocks=1)],
                        ([8, 16, 32, 64], STRIDES4), [8, 16, 32, 64, 128]),
    'mla_neck': ('mmseg', dict(type='MLANeck', in_channels=[8, 8, 8, 8], out_channels=4), ([8] * 4, [16] * 4),
                 [16] * 4),
    'multi_level_neck': ('mmseg', dict(type='MultiLevelNeck', in_channels=[8] * 4, out_channels=4,
                                       scales=[4, 2, 1, 0.5]), ([8] * 4, [16] * 4), [4, 8, 16, 32]),
    'multi_level_neck_of_one_map': ('mmseg', dict(type='MultiLevelNeck', in_channels=[8], out_channels=4,
                                                  scales=[2, 1, 0.5]), ([8], [16]), [8, 16, 32]),
    'jpu': ('mmseg', dict(type='JPU', in_channels=(8, 16, 32), mid_channels=4, start_level=1, dilations=(1, 2),
                          norm_cfg=BN), ([8, 16, 32], STRIDES3), [16, 16]),
    'feature2pyramid': ('mmseg', dict(type='Feature2Pyramid', embed_dim=8, norm_cfg=BN), ([8] * 4, [16] * 4),
                        [4, 8, 16, 32]),
    'icneck': ('mmseg', dict(type='ICNeck', in_channels=(8, 16, 32), out_channels=4), ([8, 16, 32], STRIDES3),
               [16, 8, 8]),
    'feature2pyramid_without_4x': ('mmseg', dict(type='Feature2Pyramid', embed_dim=8, rescales=[2, 1, 0.5, 0.25],
                                                 norm_cfg=BN), ([8] * 4, [16] * 4), [8, 16, 32, 64]),
}


def _chained_channels(neck, channels: list) -> list:
    """The channels the check follows through ``neck`` (a dict or a list of them) from maps of ``channels``."""
    maps = NeckMaps(channels, None)
    for part in neck if isinstance(neck, list) else [neck]:
        maps = neck_gives(part['type'], part, maps, len(maps.channels))
    return maps.channels


@pytest.mark.parametrize('scope, neck, given, strides', BUILT_NECKS.values(), ids=BUILT_NECKS.keys())
def test_the_maps_a_neck_gives_are_those_of_the_built_neck(scope, neck, given, strides):
    require('mmdet')
    require('mmseg')
    import mmdet.models  # noqa: F401  (the necks of both in their registries)
    import mmseg.models  # noqa: F401
    from mmengine.registry import MODELS, init_default_scope

    channels, in_strides = given
    assert map_fit.neck_strides(neck, in_strides) == strides
    init_default_scope(scope)
    built = MODELS.build(copy.deepcopy(neck)).eval()
    image_hw = (256, 512)
    inputs = [torch.zeros(1, c, image_hw[0] // s, image_hw[1] // s) for c, s in zip(channels, in_strides)]
    with torch.no_grad():
        maps = built(inputs)
    measured = [(image_hw[0] / m.shape[-2], image_hw[1] / m.shape[-1]) for m in maps]
    assert measured == [(s, s) for s in strides]
    assert [m.shape[1] for m in maps] == _chained_channels(neck, channels)


# Necks that combine their maps at fixed sizes: (backbone, neck as its channels fit, the reason, the advice)
SIZE_MISFITS = {
    'mlaneck_of_stages': (VSSM, dict(type='MLANeck', in_channels=[16, 32, 64], out_channels=8),
                          'adds its maps together, so they must be of one size',
                          'feed it the maps of a plain backbone (MM_LocalVim: all of stride 16), or use a neck that '
                          'resizes its maps (FPN)', [8, 16, 32]),
    **{f'{kind.lower()}_of_layers': (
        VIM, dict(type=kind, in_channels=[32, 32], out_channels=8, **({'num_outs': 2} if kind == 'PAFPN' else {})),
        'combines each map with the next at twice its stride, so their strides must double from one map to the next',
        "feed it the maps of MM_LocalVSSM's stages, or of a neck that gives such maps (SimpleFPN after MM_LocalVim)",
        [16, 16]) for kind in ('PAFPN', 'YOLOXPAFPN', 'CSPNeXtPAFPN')},
}


@pytest.mark.parametrize('backbone, neck, reason, advice, strides', SIZE_MISFITS.values(), ids=SIZE_MISFITS.keys())
def test_a_neck_that_cannot_combine_the_sizes_of_its_maps_is_refused_and_would_fail_built(backbone, neck, reason,
                                                                                          advice, strides):
    """MLANeck on LocalVMamba's stages, and PAFPN / YOLOX's / RTMDet's on LocalVim's layers, passed the channel check
    and failed in the model's first forward (a shape error after the datasets were built)."""
    given = VSSM_GIVES if backbone is VSSM else VIM_GIVES
    assert map_fit.neck_input_problem(dict(backbone=backbone, neck=neck)) == (
        f'model.neck ({neck["type"]}) {reason}, but {given}, of strides {strides}: {advice}')
    require('mmdet')
    require('mmseg')
    import mmdet.models  # noqa: F401  (the necks of both in their registries)
    import mmseg.models  # noqa: F401
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope('mmseg' if neck['type'] == 'MLANeck' else 'mmdet')
    built = MODELS.build(dict(neck, **({'norm_cfg': BN} if neck['type'] == 'MLANeck' else {}))).eval()
    inputs = [torch.zeros(1, c, 128 // s, 128 // s) for c, s in zip(neck['in_channels'], strides)]
    with pytest.raises(RuntimeError, match='size'), torch.no_grad():
        built(inputs)


def test_the_sizes_that_fit_a_neck_pass():
    """The same necks on the maps they are made for: LocalVim's one size into MLANeck, LocalVMamba's doubling
    strides into the PAFPNs."""
    assert map_fit.neck_input_problem(dict(backbone=VIM, neck=dict(type='MLANeck', in_channels=[32, 32]))) is None
    for kind in ('PAFPN', 'YOLOXPAFPN', 'CSPNeXtPAFPN'):
        neck = dict(type=kind, in_channels=[16, 32, 64], out_channels=8, **({'num_outs': 3} if kind == 'PAFPN' else {}))
        assert map_fit.neck_input_problem(dict(backbone=VSSM, neck=neck)) is None


# The necks judged since SSDNeck, RFP, ICNeck and GlobalAveragePooling were passed over (they failed in the first
# forward), and HRFPN's widths: (scope, backbone, neck, whether the check refuses it and its forward fails)
VSSM4 = dict(VSSM, out_indices=(0, 1, 2, 3))     # 8, 16, 32, 64 channels at strides 4 .. 32
RFP = dict(type='RFP', in_channels=[16, 32, 64], out_channels=8, num_outs=5, rfp_steps=2, aspp_out_channels=4,
           rfp_backbone=dict(type='DetectoRS_ResNet', depth=50, rfp_inplanes=8, out_indices=(0, 1, 2, 3)))
HRFPN = dict(type='HRFPN', out_channels=8, num_outs=3)     # (5 would pool a 64-pixel image's first map by 16)
FPG_FUSED = dict(FPG, stack_times=1, paths=['bu'], skip_inds=[()] * 5)
FORWARDS = {
    'ssd': ('mmdet', VSSM, dict(SSD, in_channels=(16, 32, 64), out_channels=(16, 32, 64, 8, 8)), False),
    'ssd_of_resnet_widths': ('mmdet', VSSM, SSD, True),
    'ssd_last_width': ('mmdet', VSSM, dict(SSD, in_channels=(16, 32, 60), out_channels=(16, 32, 60, 8, 8)), True),
    'icneck': ('mmseg', VSSM, dict(type='ICNeck', in_channels=(16, 32, 64), out_channels=8), False),
    'icneck_of_resnet_widths': ('mmseg', VSSM, dict(type='ICNeck', out_channels=8), True),
    'icneck_of_two_maps': ('mmseg', VIM, dict(type='ICNeck', in_channels=(32, 32, 32), out_channels=8), True),
    'rfp': ('mmdet', VSSM, RFP, True),
    'rfp_of_a_map_less': ('mmdet', VSSM, dict(RFP, in_channels=[32, 64]), True),     # a map taken for the image
    'gap_of_a_list': ('mmdet', VSSM, dict(type='GlobalAveragePooling'), True),
    'gap_after_fpn': ('mmdet', VSSM, [_fpn([16, 32, 64]), dict(type='GlobalAveragePooling')], False),
    'gap_of_a_bare_map': ('mmdet', dict(VIM, out_indices=[3]), dict(type='GlobalAveragePooling'), False),
    # HRFPN concatenates its maps before one convolution of sum(in_channels): widths in another order fit
    'hrfpn_widths_in_another_order': ('mmdet', VSSM, dict(HRFPN, in_channels=[32, 16, 64]), False),
    'hrfpn_of_other_widths': ('mmdet', VSSM, dict(HRFPN, in_channels=[32, 16, 62]), True),
    'hrfpn_of_one_size': ('mmdet', VIM, dict(HRFPN, in_channels=[32, 32]), True),
    # DyHead adds each map, halved by a stride-2 convolution, to the next; YOLOv3's neck each, upsampled by 2, to the
    # one before: on LocalVim's one size both fail
    'dyhead_of_one_size': ('mmdet', VIM, dict(type='DyHead', in_channels=32, out_channels=16, num_blocks=1), True),
    'dyhead_of_doubling_strides': ('mmdet', VSSM, [dict(type='ChannelMapper', in_channels=[16, 32, 64],
                                                        out_channels=16),
                                                   dict(type='DyHead', in_channels=16, out_channels=16, num_blocks=1)],
                                   False),
    'yolov3_of_one_size': ('mmdet', VIM, dict(type='YOLOV3Neck', num_scales=2, in_channels=[32, 32],
                                              out_channels=[8, 8]), True),
    'yolov3_of_doubling_strides': ('mmdet', dict(VSSM, out_indices=(1, 2)),
                                   dict(type='YOLOV3Neck', num_scales=2, in_channels=[32, 16], out_channels=[8, 8]),
                                   False),
    # PAFPN combines its maps from start_level on: a map before it may be of any stride (4, then 16 and 32)
    'pafpn_after_its_start_level': ('mmdet', dict(VSSM, out_indices=(0, 2, 3)),
                                    dict(type='PAFPN', in_channels=[8, 32, 64], out_channels=8, num_outs=3,
                                         start_level=1), False),
    'pafpn_of_strides_4_16_32': ('mmdet', dict(VSSM, out_indices=(0, 2, 3)),
                                 dict(type='PAFPN', in_channels=[8, 32, 64], out_channels=8, num_outs=3), True),
    # FPG's grid fuses each map with the one before, halved by a stride-2 convolution, and the next, upsampled by 2
    # (every map in its one stack here): from start_level on their strides must double
    'fpg_of_one_size': ('mmdet', VIM4, dict(FPG_FUSED, in_channels=[32] * 4, start_level=0, num_outs=4), True),
    'fpg_of_doubling_strides': ('mmdet', VSSM4, dict(FPG_FUSED, start_level=0), False),
    'fpg_after_its_start_level': ('mmdet', dict(VSSM, out_indices=(0, 2, 3)),
                                  dict(FPG_FUSED, in_channels=[8, 32, 64], start_level=1, num_outs=3), False),
    'fpg_of_strides_4_16_32': ('mmdet', dict(VSSM, out_indices=(0, 2, 3)),
                               dict(FPG_FUSED, in_channels=[8, 32, 64], start_level=0, num_outs=3), True),
    # FPN and its kin read only the in_channels entries of their maps start_level to end_level
    'fpg_of_an_unread_width': ('mmdet', VSSM4, dict(FPG_FUSED, in_channels=[999, 16, 32, 64], num_outs=3), False),
    'fpn_of_an_unread_first_width': ('mmdet', VSSM, dict(_fpn([999, 32, 64]), num_outs=3, start_level=1), False),
    'fpn_of_an_unread_last_width': ('mmdet', VSSM, dict(_fpn([16, 32, 999]), num_outs=2, end_level=1), False),
    'fpn_of_a_read_width_wrong': ('mmdet', VSSM, dict(_fpn([16, 32, 999]), num_outs=3, start_level=1), True),
    'nasfcos_fpn_of_an_unread_width': ('mmdet', VSSM4, dict(type='NASFCOS_FPN', in_channels=[999, 16, 32, 64],
                                                            out_channels=8, num_outs=5, start_level=1, norm_cfg=BN),
                                       False),
    # NASFCOS_FPN's 1x1 convolution of in_channels[i] takes the map i (from start_level): there the order counts
    'nasfcos_fpn_widths_in_another_order': ('mmdet', VSSM4, dict(type='NASFCOS_FPN', in_channels=[8, 32, 16, 64],
                                                                 out_channels=8, num_outs=5, norm_cfg=BN), True),
}


@pytest.mark.parametrize('scope, backbone, neck, refused', FORWARDS.values(), ids=FORWARDS.keys())
def test_the_check_refuses_a_neck_exactly_where_its_forward_fails(scope, backbone, neck, refused):
    """The real neck, built by mmdet or mmseg, on the maps our built backbone gives: the check passes it iff its
    forward works; where it works, the channels the check follows are those of the maps it gives."""
    require('mmdet')
    require('mmseg')
    import mmdet.models  # noqa: F401  (the necks of both in their registries)
    import mmseg.models  # noqa: F401
    from mmengine.registry import MODELS

    problem = map_fit.neck_input_problem(dict(backbone=backbone, neck=neck), bare_single_map=scope == 'mmdet')
    assert (problem is not None) == refused, problem
    maps = our_maps(scope, backbone)
    parts = neck if isinstance(neck, list) else [neck]
    built = torch.nn.Sequential(*[MODELS.build(copy.deepcopy(part)) for part in parts]).eval()
    try:
        with torch.no_grad():
            given = built(maps)
    except (AssertionError, RuntimeError, TypeError) as error:
        assert refused, f'{problem} / {error!r}'
        return
    assert not refused
    if isinstance(neck, dict) and isinstance(maps, list):
        follows = neck_gives(neck['type'], neck, NeckMaps([m.shape[1] for m in maps], None), len(maps))
        assert [m.shape[1] for m in given] == follows.channels


# ---------------------------------------------------------------------------------------------------------------------
# Real detectors on a tiny LocalVMamba: the advice alone fits them, and the maps are those the check assumed

def _follow_advice(cfg) -> list:
    """Apply the checks' advice to ``cfg`` until they have none; the --cfg-options of each, in order."""
    advice = []
    while (problem := map_fit.neck_input_problem(cfg.model) or map_fit.head_stride_problem(cfg.model)) \
            and len(advice) < 4:
        advice.append(problem.split('set --cfg-options ')[1])
        apply_advice(cfg, problem)
    return advice


def _mmdet_model(config: str, **backbone):
    """mmdet's own ``config``'s model with a one-block-per-stage LocalVMamba of dims 16 (``backbone`` settings)."""
    import mmdet
    from mmengine.config import Config

    import detection.local_mamba  # noqa: F401  (our backbones in mmdet's registry)
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', config))
    ours = det_config('mask_rcnn_local_vssm_tiny_fpn_coco.py').model.backbone
    cfg.model['backbone'] = dict(tiny_vssm_backbone(ours, dims=16), **backbone)
    return cfg


def _measured(detector) -> tuple:
    """The strides and channels of the maps ``detector`` extracts from a 256x512 input."""
    with torch.no_grad():
        maps = detector.extract_feat(torch.zeros(1, 3, 256, 512))
    assert all(256 / m.shape[-2] == 512 / m.shape[-1] for m in maps)
    return [256 // m.shape[-2] for m in maps], [m.shape[1] for m in maps]


def test_an_atss_with_fpn_then_dyhead_is_fitted_through_the_list_and_gives_the_maps_assumed():
    """From stages 1 to 3 (strides 8 .. 32) FPN's start_level 1 makes maps of strides 16 .. 256 that DyHead keeps."""
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    cfg = _mmdet_model('dyhead/atss_r50_fpn_dyhead_1x_coco.py', out_indices=(1, 2, 3))
    fpn, dyhead = cfg.model.neck
    fpn['out_channels'] = 32
    dyhead.update(out_channels=32, num_blocks=1)
    cfg.model.bbox_head.update(in_channels=32, feat_channels=32, stacked_convs=1)
    assert _follow_advice(cfg) == ['model.neck.0.in_channels=[32,64,128]', 'model.neck.1.in_channels=32',
                                   'model.bbox_head.anchor_generator.strides=[16,32,64,128,256]']
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model).eval()
    strides, channels = _measured(detector)
    assert strides == map_fit.neck_strides(cfg.model.neck, [8, 16, 32]) == [16, 32, 64, 128, 256]
    assert channels == [32] * 5
    assert detector.bbox_head.prior_generator.strides == [(s, s) for s in strides]


def test_a_yolov3_is_fitted_in_its_reversed_order_and_gives_the_maps_assumed():
    """Stages 1 to 3 of 8-pixel patches (strides 16 .. 64) reach YOLOv3's head deepest first."""
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    cfg = _mmdet_model('yolo/yolov3_d53_8xb8-ms-608-273e_coco.py', out_indices=(1, 2, 3), patch_size=8)
    cfg.model.neck['out_channels'] = [16, 8, 4]
    cfg.model.bbox_head.update(in_channels=[16, 8, 4], out_channels=[16, 8, 4])
    assert _follow_advice(cfg) == ['model.neck.in_channels=[128,64,32]',
                                   'model.bbox_head.featmap_strides=[64,32,16] '
                                   'model.bbox_head.anchor_generator.strides=[64,32,16]']
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model).eval()
    strides, channels = _measured(detector)
    assert strides == map_fit.neck_strides(cfg.model.neck, [16, 32, 64]) == [64, 32, 16]
    assert channels == [16, 8, 4]
    assert list(detector.bbox_head.featmap_strides) == strides
    assert detector.bbox_head.prior_generator.strides == [(s, s) for s in strides]


def test_mmsegs_vit_upernet_on_a_local_vim_is_fitted_through_its_multi_level_neck_and_trains():
    """mmseg's ViT config with LocalVim's 4 layers of 32 channels and its MultiLevelNeck narrowed to 32 channels: the
    advice fits the neck, then both heads to the maps the neck gives (UPerHead and FCNHead ended in a channel error)."""
    require('mmseg')
    import mmseg
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import segmentation.local_mamba  # noqa: F401  (our backbones in mmseg's registry)
    config = 'vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs', config))
    ours = seg_config('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py').model.backbone
    cfg.model['backbone'] = tiny_vim_backbone(ours, depth=4, out_indices=[0, 1, 2, 3], width=32)
    cfg.model['pretrained'] = None
    cfg.model.neck['out_channels'] = 32
    cfg.model.decode_head['channels'] = 16
    cfg.model.auxiliary_head['channels'] = 8
    cfg.model.data_preprocessor['size'] = IMAGE_HW
    assert _follow_advice(cfg) == ['model.neck.in_channels=[32,32,32,32]',
                                   'model.decode_head.in_channels=[32,32,32,32]',
                                   'model.auxiliary_head.in_channels=32']
    init_default_scope('mmseg')
    segmentor = revert_sync_batchnorm(MODELS.build(cfg.model))
    with torch.no_grad():
        maps = segmentor.extract_feat(torch.zeros(1, 3, *IMAGE_HW))
    assert [m.shape[1] for m in maps] == [32] * 4
    loss = loss_and_grads(segmentor, seg_batch())
    assert loss.isfinite() and loss > 0


# Detection heads that take one in_channels entry per map the neck gives: (backbone, neck, head, whether the check
# refuses it and the head's forward on the neck's maps fails)
SSD_FITS = dict(SSD, in_channels=(16, 32), out_channels=(16, 32, 8, 8))     # stages 1, 2: then two maps of 8
SSD_HEAD = dict(type='SSDHead', num_classes=3, in_channels=(16, 32, 8, 8),
                anchor_generator=dict(type='SSDAnchorGenerator', scale_major=False, input_size=300,
                                      basesize_ratio_range=(0.15, 0.9), strides=[8, 16, 32, 64], ratios=[[2]] * 4))
YOLOV3_NECK = dict(type='YOLOV3Neck', num_scales=3, in_channels=[64, 32, 16], out_channels=[16, 8, 4])
YOLOV3_HEAD = dict(type='YOLOV3Head', num_classes=3, in_channels=[16, 8, 4], out_channels=[8, 8, 8],
                   featmap_strides=[32, 16, 8])
VSSM12 = dict(VSSM, out_indices=(1, 2))
HEAD_FORWARDS = {
    'ssd_head': (VSSM12, SSD_FITS, SSD_HEAD, False),
    'ssd_head_of_vgg_widths': (VSSM12, SSD_FITS, dict(SSD_HEAD, in_channels=(512, 1024, 8, 8)), True),
    'pisa_ssd_head_of_vgg_widths': (VSSM12, SSD_FITS, dict(SSD_HEAD, type='PISASSDHead', in_channels=(512, 1024, 8, 8)),
                                    True),
    'yolov3_head': (VSSM, YOLOV3_NECK, YOLOV3_HEAD, False),
    'yolov3_head_of_darknet_widths': (VSSM, YOLOV3_NECK, dict(YOLOV3_HEAD, in_channels=[512, 256, 128]), True),
    'yolov3_head_of_a_map_more': (VSSM12, dict(YOLOV3_NECK, num_scales=2, in_channels=[32, 16], out_channels=[8, 4]),
                                  dict(YOLOV3_HEAD, in_channels=[8, 4, 4]), True),
}


@pytest.mark.parametrize('backbone, neck, head, refused', HEAD_FORWARDS.values(), ids=HEAD_FORWARDS.keys())
def test_the_check_refuses_a_detection_head_of_map_widths_exactly_where_its_forward_fails(backbone, neck, head,
                                                                                          refused):
    """SSD's and YOLOv3's heads, built by mmdet, on the maps the real neck gives from our built backbone's; where
    the line has --cfg-options, the head they set takes the maps."""
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.config import Config

    cfg = Config(dict(model=dict(backbone=backbone, neck=neck, bbox_head=copy.deepcopy(head))))
    problem = map_fit.neck_input_problem(cfg.model, bare_single_map=True)
    assert (problem is not None) == refused, problem
    ours = our_maps('mmdet', backbone)     # (in mmdet's default scope)
    with torch.no_grad():
        maps = MODELS.build(copy.deepcopy(neck)).eval()(ours)
        try:
            MODELS.build(copy.deepcopy(head)).eval()(maps)
        except (AssertionError, RuntimeError):
            assert refused, problem
        else:
            assert not refused
        if refused and 'set --cfg-options' in problem:
            apply_advice(cfg, problem)
            assert map_fit.neck_input_problem(cfg.model) is None
            MODELS.build(cfg.model.bbox_head).eval()(maps)


def test_an_ssd300_is_fitted_through_its_neck_and_head_and_runs():
    """mmdet's SSD300 on stages 1 and 2 (strides 8 and 16, as VGG's maps): the neck's advice alone left the head of
    VGG's widths, whose first convolution refused the maps; both lines' advice, one after another, fit it."""
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    cfg = _mmdet_model('ssd/ssd300_coco.py', out_indices=(1, 2))     # 32 and 64 channels
    assert _follow_advice(cfg) == ['model.neck.in_channels=(32,64) model.neck.out_channels=(32,64,512,256,256,256)',
                                   'model.bbox_head.in_channels=(32,64,512,256,256,256)']
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        scores, boxes = detector._forward(torch.zeros(1, 3, 300, 300))
    assert [s.shape[-1] for s in scores] == [38, 19, 10, 5, 3, 1]
    assert [b.shape[1] for b in boxes] == [4 * n for n in detector.bbox_head.prior_generator.num_base_priors]
