"""The det/seg tools' check of the MaskFormer and Mask2Former heads on our backbones' maps, mmseg's (mmdet's, wrapped)
and mmdet's panoptic ones: they take every map the backbone gives, whatever their in_index, and build their pixel
decoder on their in_channels. The tables build the real head, shrunk from mmseg's and mmdet's own configs, on the maps
our built backbone gives, and the check refuses exactly where its build or forward fails, in one line whose
--cfg-options fit it; and where it runs but leaves maps unread (more maps than in_channels entries)."""
import copy
import importlib
import os
import re
from functools import partial

import pytest
import torch

from conftest import apply_advice, our_maps, require

from classification.dense import map_fit

VSSM4 = dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1), out_indices=(0, 1, 2, 3))   # 8 .. 64 channels
VSSM4_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (0, 1, 2, 3)) gives 4 maps of [8, 16, 32, 64] channels '
               '(stages 0, 1, 2, 3)')
VSSM3 = dict(VSSM4, out_indices=(1, 2, 3))
VSSM3_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (1, 2, 3)) gives 3 maps of [16, 32, 64] channels '
               '(stages 1, 2, 3)')
VIM4 = dict(type='MM_LocalVim', embed_dim=32, depth=4, out_indices=[0, 1, 2, 3])     # all of stride 16
VIM5 = dict(VIM4, depth=5, out_indices=[0, 1, 2, 3, 4])
VIM5_GIVES = ('model.backbone (MM_LocalVim, out_indices [0, 1, 2, 3, 4]) gives 5 maps of [32, 32, 32, 32, 32] '
              'channels (layers 0, 1, 2, 3, 4)')
VSSM23 = dict(VSSM4, out_indices=(2, 3))
VSSM23_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (2, 3)) gives 2 maps of [32, 64] channels '
                '(stages 2, 3)')
SWIN = [96, 192, 384, 768]
NARROW = 16     # the shrunk heads' feat_channels, out_channels and embed_dims


MMSEG_CONFIGS = dict(mask2former='mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py',
                     maskformer='maskformer/maskformer_swin-t_upernet_8xb2-160k_ade20k-512x512.py')
MMDET_CONFIGS = dict(mask2former='mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
                     maskformer='maskformer/maskformer_r50_ms-16xb1-75e_coco.py')


def _framework_head(scope: str, family: str) -> dict:
    """The head of mmseg's (``scope``) Swin-T config of ``family`` (its decode_head), or of mmdet's R-50 panoptic one
    (its panoptic_head)."""
    from mmengine.config import Config

    configs, key = (MMSEG_CONFIGS, 'decode_head') if scope == 'mmseg' else (MMDET_CONFIGS, 'panoptic_head')
    path = os.path.join(os.path.dirname(importlib.import_module(scope).__file__), '.mim', 'configs', configs[family])
    return copy.deepcopy(Config.fromfile(path).model[key])


def _narrow_layers(layers: dict, count: int) -> None:
    """A transformer's ``layers`` config: ``count`` layers of NARROW channels and two heads."""
    layers['num_layers'] = count
    for key in ('self_attn_cfg', 'cross_attn_cfg'):
        if key in layers['layer_cfg']:
            layers['layer_cfg'][key].update(embed_dims=NARROW, num_heads=2)
    layers['layer_cfg']['ffn_cfg'].update(embed_dims=NARROW, feedforward_channels=NARROW)


def mask2former(in_channels: list, levels: int = 3, scope: str = 'mmseg', **settings) -> dict:
    """mmseg's Swin-T (or mmdet's panoptic) Mask2Former head, narrow, of ``levels`` levels, 4 queries and one layer of
    each transformer."""
    head = _framework_head(scope, 'mask2former')
    head.update(in_channels=in_channels, feat_channels=NARROW, out_channels=NARROW, num_queries=4,
                num_transformer_feat_level=levels)
    decoder = head['pixel_decoder']
    decoder.update(norm_cfg=dict(type='GN', num_groups=4), num_outs=levels)
    _narrow_layers(decoder['encoder'], 1)
    decoder['encoder']['layer_cfg']['self_attn_cfg']['num_levels'] = levels
    decoder['positional_encoding']['num_feats'] = NARROW // 2
    head['positional_encoding']['num_feats'] = NARROW // 2
    _narrow_layers(head['transformer_decoder'], 1)
    for key, value in settings.items():
        if isinstance(value, dict):
            head[key].update(value)
        else:
            head[key] = value
    return head


def maskformer(in_channels: list, decoder: str = 'PixelDecoder', scope: str = 'mmseg', **settings) -> dict:
    """mmseg's Swin-T (or mmdet's panoptic) MaskFormer head, narrow, of 4 queries and one decoder layer, with the
    pixel decoder ``decoder`` (TransformerEncoderPixelDecoder: one encoder layer)."""
    head = _framework_head(scope, 'maskformer')
    head.update(in_channels=in_channels, feat_channels=NARROW, out_channels=NARROW, num_queries=4, **settings)
    head['pixel_decoder'] = dict(type=f'mmdet.{decoder}', norm_cfg=dict(type='GN', num_groups=4),
                                 act_cfg=dict(type='ReLU'))
    if decoder == 'TransformerEncoderPixelDecoder':
        head['pixel_decoder']['encoder'] = dict(num_layers=1, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=NARROW, num_heads=2, batch_first=True),
            ffn_cfg=dict(embed_dims=NARROW, feedforward_channels=NARROW)))
        head['pixel_decoder']['positional_encoding'] = dict(num_feats=NARROW // 2, normalize=True)
    head['positional_encoding']['num_feats'] = NARROW // 2
    _narrow_layers(head['transformer_decoder'], 1)
    return head


def _sample():
    """The data sample of one 64x64 image, as the heads' forward reads it (its metainfo)."""
    from mmengine.structures import BaseDataElement

    return BaseDataElement(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64)))


def _head_runs(scope: str, head: dict, maps) -> bool:
    """Whether mmseg or mmdet (``scope``) builds ``head`` and its forward takes ``maps`` (of one 64x64 image)."""
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(scope)
    try:
        built = MODELS.build(copy.deepcopy(head)).eval()
        with torch.no_grad():
            built(maps, [_sample()])
    except (IndexError, RuntimeError):
        return False
    return True


# (backbone, the head's maker, the check's line for it: None where the head takes the backbone's maps)
FORWARDS = {
    'mask2former': (VSSM4, partial(mask2former, [8, 16, 32, 64]), None),
    'mask2former_of_swin_widths': (
        VSSM4, partial(mask2former, SWIN),
        f'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels {SWIN}, but {VSSM4_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    'mask2former_of_a_map_more': (
        VSSM3, partial(mask2former, [8, 16, 32, 64]),
        f'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [8, 16, 32, 64], but {VSSM3_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[16,32,64]'),
    # its in_index does not choose the maps: it reads the first three (8, 16 and 32 channels)
    'mask2former_of_in_index_1_2_3': (
        VSSM4, partial(mask2former, [16, 32, 64], in_index=[1, 2, 3]),
        f'model.decode_head (Mask2FormerHead) takes 3 maps of in_channels [16, 32, 64], but {VSSM4_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    # LocalVim's maps, all of stride 16: its default strides (4, 8, 16, 32) serve, they only scale its points
    'mask2former_on_local_vim': (VIM4, partial(mask2former, [32] * 4), None),
    'mask2former_of_five_maps': (
        VIM5, partial(mask2former, [32] * 5),
        f'model.decode_head (Mask2FormerHead) takes 5 maps of in_channels [32, 32, 32, 32, 32] and '
        f'pixel_decoder.strides [4, 8, 16, 32] (one per map), but {VIM5_GIVES}: set --cfg-options '
        f'model.decode_head.pixel_decoder.strides=[16,16,16,16,16]'),
    # the maps of its first three entries are given, the fourth is not
    'mask2former_of_an_entry_more_than_maps': (
        VSSM3, partial(mask2former, [16, 32, 64, 64]),
        f'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [16, 32, 64, 64], but {VSSM3_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[16,32,64]'),
    # three levels of one entry: the decoder's second and third levels read in_channels entries it has not
    'mask2former_of_one_entry_for_three_levels': (
        VSSM4, partial(mask2former, [64]),
        f'model.decode_head (Mask2FormerHead) takes 1 map of in_channels [64], but {VSSM4_GIVES}: set --cfg-options '
        f'model.decode_head.in_channels=[8,16,32,64]'),
    # four levels of two maps take them (each map twice): only its widths are off
    'mask2former_of_twice_as_many_levels_as_maps': (
        VSSM23, partial(mask2former, [8, 64], levels=4),
        f'model.decode_head (Mask2FormerHead) takes 2 maps of in_channels [8, 64], but {VSSM23_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[32,64]'),
    # three levels of two maps: the third level reads the last map again
    'mask2former_of_more_levels_than_maps': (VSSM23, partial(mask2former, [32, 64]), None),
    'mask2former_of_one_map_for_three_levels': (
        dict(VSSM4, out_indices=(3,)), partial(mask2former, [64]),
        'model.decode_head (Mask2FormerHead) takes 1 map of in_channels [64] into 3 levels (at most twice as many as '
        'maps), but model.backbone (MM_LocalVSSM, out_indices (3,)) gives 1 map of [64] channels (stage 3): set '
        '--cfg-options model.decode_head.num_transformer_feat_level=1 '
        'model.decode_head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.num_levels=1'),
    'maskformer': (VSSM4, partial(maskformer, [8, 16, 32, 64]), None),
    'maskformer_on_local_vim': (VIM4, partial(maskformer, [32] * 4), None),
    'maskformer_of_swin_widths': (
        VSSM3, partial(maskformer, SWIN, in_index=[0, 1, 2, 3]),
        f'model.decode_head (MaskFormerHead) takes 4 maps of in_channels {SWIN}, but {VSSM3_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[16,32,64]'),
    # the fix keeps the tuple form the config gives
    'maskformer_of_swin_widths_in_a_tuple': (
        VSSM3, partial(maskformer, tuple(SWIN)),
        f'model.decode_head (MaskFormerHead) takes 4 maps of in_channels {SWIN}, but {VSSM3_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=(16,32,64)'),
    'maskformer_of_in_index_1_2_3': (
        VSSM4, partial(maskformer, [16, 32, 64], in_index=[1, 2, 3]),
        f'model.decode_head (MaskFormerHead) takes 3 maps of in_channels [16, 32, 64], but {VSSM4_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    # it reads its first entries' maps and the last map: here the third map twice, as entries 2 and 3
    'maskformer_of_an_entry_more': (VSSM3, partial(maskformer, [16, 32, 64, 64]), None),
    # all but its third entry fit
    'maskformer_of_another_third_width': (
        VSSM4, partial(maskformer, [8, 16, 16, 64]),
        f'model.decode_head (MaskFormerHead) takes 4 maps of in_channels [8, 16, 16, 64], but {VSSM4_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    # five maps: MaskFormer's pixel decoders have no strides to set
    'maskformer_of_five_maps_of_other_widths': (
        VIM5, partial(maskformer, [16] * 5),
        f'model.decode_head (MaskFormerHead) takes 5 maps of in_channels [16, 16, 16, 16, 16], but {VIM5_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[32,32,32,32,32]'),
    'transformer_encoder_pixel_decoder': (VIM4, partial(maskformer, [32] * 4, 'TransformerEncoderPixelDecoder'), None),
    'transformer_encoder_pixel_decoder_of_swin_widths': (
        VSSM3, partial(maskformer, SWIN, 'TransformerEncoderPixelDecoder'),
        f'model.decode_head (MaskFormerHead) takes 4 maps of in_channels {SWIN}, but {VSSM3_GIVES}: set '
        f'--cfg-options model.decode_head.in_channels=[16,32,64]'),
}


def _checked_mmseg_head(backbone: dict, make_head, message):
    """mmseg's head of ``make_head`` as a segmentor config's decode_head on ``backbone``, checked to give the check's
    ``message`` (None: no problem): (the head's config, the segmentor config, the maps our built backbone gives)."""
    require('mmseg')
    require('mmdet')
    import mmdet.models  # noqa: F401  (the pixel decoders in mmdet's registry)
    from mmengine.config import Config

    head = make_head()
    cfg = Config(dict(model=dict(backbone=backbone, decode_head=copy.deepcopy(head))))
    assert map_fit.neck_input_problem(cfg.model) == message
    return head, cfg, our_maps('mmseg', backbone)


@pytest.mark.parametrize('backbone, make_head, message', FORWARDS.values(), ids=FORWARDS.keys())
def test_the_check_refuses_a_mask_head_exactly_where_it_fails_on_our_maps(backbone, make_head, message):
    """mmseg's head, built on the maps our built backbone gives: the check's line is the one expected, given iff
    the head's build or forward fails; its --cfg-options fit the head, which then takes the maps."""
    head, cfg, maps = _checked_mmseg_head(backbone, make_head, message)
    assert _head_runs('mmseg', head, maps) == (message is None)
    if message is not None:
        apply_advice(cfg, message)
        assert map_fit.neck_input_problem(cfg.model) is None
        assert _head_runs('mmseg', cfg.model.decode_head, maps)


def _unread(given: str, which: str, out_indices: str) -> str:
    """The words after ``given`` (the maps' words) for a head that would leave ``which`` unread, with the out_indices
    of the maps it reads ('' where it reads one)."""
    words = f'{given}, and it would leave {which} unread'
    if out_indices:
        words += (f': give only the maps it reads (--cfg-options model.backbone.out_indices={out_indices}), or read '
                  f'them all')
    return words


# Heads that run on more maps than their in_channels entries and pass some over: (backbone, the head's maker, the maps
# it reads, the check's line)
UNREAD = {
    # Mask2Former reads its first in_channels maps
    'mask2former_of_the_first_maps': (
        VSSM4, partial(mask2former, [8, 16, 32]), [0, 1, 2],
        f'model.decode_head (Mask2FormerHead) takes 3 maps of in_channels [8, 16, 32], but '
        f'{_unread(VSSM4_GIVES, "stage 3", "(0,1,2)")}: set --cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    # reading all five maps needs a fifth stride too
    'mask2former_of_four_of_five_maps': (
        VIM5, partial(mask2former, [32] * 4), [0, 1, 2, 3],
        f'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [32, 32, 32, 32], but '
        f'{_unread(VIM5_GIVES, "layer 4", "[0,1,2,3]")}: set --cfg-options '
        f'model.decode_head.in_channels=[32,32,32,32,32] model.decode_head.pixel_decoder.strides=[16,16,16,16,16]'),
    # one map read: no list of maps to give it
    'mask2former_of_one_of_two_maps': (
        VSSM23, partial(mask2former, [32], levels=1), [0],
        f'model.decode_head (Mask2FormerHead) takes 1 map of in_channels [32], but '
        f'{_unread(VSSM23_GIVES, "stage 3", "")}: set --cfg-options model.decode_head.in_channels=[32,64]'),
    # MaskFormer reads its first in_channels maps but one, and the last
    'maskformer_of_the_first_and_last_maps': (
        VSSM4, partial(maskformer, [8, 16, 64]), [0, 1, 3],
        f'model.decode_head (MaskFormerHead) takes 3 maps of in_channels [8, 16, 64], but '
        f'{_unread(VSSM4_GIVES, "stage 2", "(0,1,3)")}: set --cfg-options model.decode_head.in_channels=[8,16,32,64]'),
    # maps of stages 1 to 3: the out_indices that give only those it reads are stages, not places in the list
    'mask2former_of_two_levels_of_three_maps': (
        VSSM3, partial(mask2former, [16, 32], levels=2), [0, 1],
        f'model.decode_head (Mask2FormerHead) takes 2 maps of in_channels [16, 32], but '
        f'{_unread(VSSM3_GIVES, "stage 3", "(1,2)")}: set --cfg-options model.decode_head.in_channels=[16,32,64]'),
    'transformer_encoder_pixel_decoder_of_three_of_five_maps': (
        VIM5, partial(maskformer, [32] * 3, 'TransformerEncoderPixelDecoder'), [0, 1, 4],
        f'model.decode_head (MaskFormerHead) takes 3 maps of in_channels [32, 32, 32], but '
        f'{_unread(VIM5_GIVES, "layers 2, 3", "[0,1,4]")}: set --cfg-options '
        f'model.decode_head.in_channels=[32,32,32,32,32]'),
}


def _head_outputs(head: torch.nn.Module, maps: list) -> list:
    """Every tensor the built mmseg ``head`` gives for ``maps`` (of one 64x64 image)."""
    with torch.no_grad():
        outputs = head(maps, [_sample()])
    return [t for part in outputs for t in (part if isinstance(part, list) else [part])]


@pytest.mark.parametrize('backbone, make_head, reads, message', UNREAD.values(), ids=UNREAD.keys())
def test_a_mask_head_that_would_leave_maps_unread_is_refused_and_both_ways_out_fit(backbone, make_head, reads,
                                                                                   message):
    """mmseg's head runs, but what it gives does not change with the maps it passes over (what gives them would get
    no gradient: DistributedDataParallel stops on it), and does with those it reads. The line names the maps passed
    over; its --cfg-options (read them all) fit, and so do the out_indices it names (give only the maps read)."""
    from mmengine.registry import MODELS

    head, cfg, maps = _checked_mmseg_head(backbone, make_head, message)
    built = MODELS.build(copy.deepcopy(head)).eval()
    outputs = _head_outputs(built, maps)
    others = [m if i in reads else m + 1 for i, m in enumerate(maps)]
    assert all(torch.equal(a, b) for a, b in zip(outputs, _head_outputs(built, others)))
    others = [m + 1 if i == reads[-1] else m for i, m in enumerate(maps)]
    assert not all(torch.equal(a, b) for a, b in zip(outputs, _head_outputs(built, others)))

    read_all = copy.deepcopy(cfg)
    apply_advice(read_all, message)
    assert map_fit.neck_input_problem(read_all.model) is None
    assert _head_runs('mmseg', read_all.model.decode_head, maps)
    fewer = re.search(r'\(--cfg-options (\S+)\)', message)
    if fewer:
        apply_advice(cfg, f'set --cfg-options {fewer.group(1)}')
        assert map_fit.neck_input_problem(cfg.model) is None
        assert _head_runs('mmseg', cfg.model.decode_head, our_maps('mmseg', cfg.model.backbone))


VIM1 = dict(VIM4, depth=2, out_indices=[1])
VIM1_GIVES = 'model.backbone (MM_LocalVim, out_indices [1]) gives 1 map of [32] channels (layer 1)'
R50 = [256, 512, 1024, 2048]
BARE = ("and mmdet's MM_LocalVim passes one map on bare (as SimpleFPN takes it): give model.backbone.out_indices two "
        "or more layers (and model.panoptic_head.in_channels one entry per layer), or use SimpleFPN")
# mmdet's panoptic heads: (backbone, the head's maker, the check's line for it, with mmdet's registration of our
# backbones)
PANOPTIC_FORWARDS = {
    'mask2former': (VSSM4, partial(mask2former, [8, 16, 32, 64], scope='mmdet'), None),
    'mask2former_of_r50_widths': (
        VSSM4, partial(mask2former, R50, scope='mmdet'),
        f'model.panoptic_head (Mask2FormerHead) takes 4 maps of in_channels {R50}, but {VSSM4_GIVES}: set '
        f'--cfg-options model.panoptic_head.in_channels=[8,16,32,64]'),
    'maskformer_on_local_vim': (VIM4, partial(maskformer, [32] * 4, 'TransformerEncoderPixelDecoder', 'mmdet'), None),
    'maskformer_of_r50_widths': (
        VSSM3, partial(maskformer, R50, 'TransformerEncoderPixelDecoder', 'mmdet'),
        f'model.panoptic_head (MaskFormerHead) takes 4 maps of in_channels {R50}, but {VSSM3_GIVES}: set '
        f'--cfg-options model.panoptic_head.in_channels=[16,32,64]'),
    # one map of its width and one level: the head still takes the batch of maps for a list of them
    'mask2former_on_a_bare_map': (
        VIM1, partial(mask2former, [32], levels=1, scope='mmdet'),
        f'model.panoptic_head (Mask2FormerHead) takes a list of maps, but {VIM1_GIVES}, {BARE}'),
    'maskformer_on_a_bare_map': (
        VIM1, partial(maskformer, [32], scope='mmdet'),
        f'model.panoptic_head (MaskFormerHead) takes a list of maps, but {VIM1_GIVES}, {BARE}'),
}


@pytest.mark.parametrize('backbone, make_head, message', PANOPTIC_FORWARDS.values(), ids=PANOPTIC_FORWARDS.keys())
def test_the_check_refuses_a_panoptic_head_exactly_where_it_fails_on_our_maps(backbone, make_head, message):
    """mmdet's panoptic MaskFormer and Mask2Former heads on the maps our backbone, built as mmdet builds it, gives
    (LocalVim's one map bare): the line is given iff the head fails; its --cfg-options fit the head."""
    require('mmdet')
    from mmengine.config import Config

    head = make_head()
    cfg = Config(dict(model=dict(backbone=backbone, panoptic_head=copy.deepcopy(head))))
    assert map_fit.neck_input_problem(cfg.model, bare_single_map=True) == message
    maps = our_maps('mmdet', backbone)
    assert _head_runs('mmdet', head, maps) == (message is None)
    if message is not None and 'set --cfg-options' in message:
        apply_advice(cfg, message)
        assert map_fit.neck_input_problem(cfg.model, bare_single_map=True) is None
        assert _head_runs('mmdet', cfg.model.panoptic_head, maps)


def test_mask2formers_strides_do_not_change_what_it_computes():
    """The pixel decoder divides each level's points by its stride times the map's size: on LocalVim's maps of
    stride 16 its default strides give what strides of 16 give. mmseg's config sets strides on the head, which the
    head does not pass on: its pixel decoder keeps the default."""
    require('mmseg')
    require('mmdet')
    import mmdet.models  # noqa: F401
    from mmseg.registry import MODELS

    maps = our_maps('mmseg', VIM4)
    torch.manual_seed(0)
    maps = [m + torch.randn_like(m) for m in maps]      # not one value everywhere
    default = MODELS.build(mask2former([32] * 4, strides=[16] * 4)).eval()
    assert default.pixel_decoder.strides == [4, 8, 16, 32]
    sixteen = MODELS.build(mask2former([32] * 4, pixel_decoder=dict(strides=[16] * 4))).eval()
    assert sixteen.pixel_decoder.strides == [16] * 4
    sixteen.load_state_dict(default.state_dict())
    with torch.no_grad():
        classes, masks = default(maps, [_sample()])
        assert all(torch.equal(a, b) for a, b in zip(classes + masks, sum(sixteen(maps, [_sample()]), [])))


def test_a_mask_head_after_a_neck_is_judged_by_the_neck_maps():
    require('mmseg')
    neck = dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=4)
    model = dict(backbone=VSSM4, neck=neck, decode_head=mask2former([8, 16, 32, 64]))
    assert map_fit.neck_input_problem(model) == (
        'model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [8, 16, 32, 64], but model.neck (FPN) gives '
        '4 maps of [8, 8, 8, 8] channels: set --cfg-options model.decode_head.in_channels=[8,8,8,8]')
    neck = dict(neck, num_outs=5)
    model = dict(backbone=VSSM4, neck=neck, decode_head=mask2former([8] * 5))
    assert map_fit.neck_input_problem(model) == (
        'model.decode_head (Mask2FormerHead) takes 5 maps of in_channels [8, 8, 8, 8, 8] and pixel_decoder.strides '
        '[4, 8, 16, 32] (one per map), but model.neck (FPN) gives 5 maps of [8, 8, 8, 8, 8] channels: set '
        '--cfg-options model.decode_head.pixel_decoder.strides=[4,8,16,32,64]')
    # the neck's fifth map, which it passes over, pools the fourth: no parameter goes without a gradient
    model = dict(backbone=VSSM4, neck=neck, decode_head=mask2former([8] * 4))
    assert map_fit.neck_input_problem(model) is None


# mmdet's SSDNeck on stages 1 and 2: those maps, then two of 8 channels, of strides not known here
SSD_NECK = dict(type='mmdet.SSDNeck', in_channels=(16, 32), out_channels=(16, 32, 8, 8), level_strides=(2, 2),
                level_paddings=(1, 1), l2_norm_scale=None)


def test_mask2former_of_fewer_strides_than_maps_is_refused_where_the_maps_strides_are_not_known():
    """After SSDNeck the maps' strides are not known, but their count is: a pixel decoder of three strides for four
    maps ends its forward in an IndexError (it looks up the stride of each level it reads). The line gives its strides
    doubled on, which fit: their values only scale its sampling points."""
    require('mmseg')
    require('mmdet')
    import mmdet.models  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS

    backbone = dict(VSSM4, out_indices=(1, 2))
    head = mask2former([16, 32, 8, 8], pixel_decoder=dict(strides=[4, 8, 16]))
    cfg = Config(dict(model=dict(backbone=backbone, neck=SSD_NECK, decode_head=copy.deepcopy(head))))
    message = ('model.decode_head (Mask2FormerHead) takes 4 maps of in_channels [16, 32, 8, 8] and '
               'pixel_decoder.strides [4, 8, 16] (one per map), but model.neck (SSDNeck) gives 4 maps of '
               '[16, 32, 8, 8] channels, of strides not known here (the values of pixel_decoder.strides only scale '
               'its sampling points): set --cfg-options model.decode_head.pixel_decoder.strides=[4,8,16,32]')
    assert map_fit.neck_input_problem(cfg.model) == message
    with torch.no_grad():
        maps = MODELS.build(SSD_NECK).eval()(our_maps('mmseg', backbone))
    assert [m.shape[1] for m in maps] == [16, 32, 8, 8]
    with pytest.raises(IndexError):
        MODELS.build(copy.deepcopy(head)).eval()(list(maps), [_sample()])
    apply_advice(cfg, message)
    assert map_fit.neck_input_problem(cfg.model) is None
    assert _head_runs('mmseg', cfg.model.decode_head, list(maps))
    cfg.model.decode_head.pixel_decoder.strides = []     # none: doubled on from MSDeformAttnPixelDecoder's first
    assert map_fit.neck_input_problem(cfg.model).endswith('model.decode_head.pixel_decoder.strides=[4,8,16,32]')


def test_a_pixel_decoder_not_known_here_is_left_to_mmdet():
    """Mask2Former's levels come from its encoder's attention config (num_levels): without it, or with a pixel
    decoder of another type, the check does not guess."""
    require('mmseg')
    head = mask2former(SWIN)
    del head['pixel_decoder']['encoder']['layer_cfg']['self_attn_cfg']['num_levels']
    assert map_fit.neck_input_problem(dict(backbone=VSSM4, decode_head=head)) is None
    head = maskformer(SWIN, 'MyPixelDecoder')
    assert map_fit.neck_input_problem(dict(backbone=VSSM4, decode_head=head)) is None


def test_a_panoptic_mask_head_after_simple_fpn_takes_its_list_of_maps():
    """SimpleFPN turns mmdet's bare LocalVim map into a list: the head after it is judged on the neck's maps, not
    refused for a bare map."""
    require('mmdet')
    neck = dict(type='SimpleFPN', backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=16, num_outs=5)
    model = dict(backbone=VIM1, neck=neck, panoptic_head=mask2former([16] * 4, scope='mmdet'))
    assert map_fit.neck_input_problem(model, bare_single_map=True) is None
