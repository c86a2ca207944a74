"""Every LocalMamba det/seg config builds its model with the installed mmdet / mmseg, with the original's key names."""
import functools
import os
import subprocess
import sys

import pytest

from conftest import DET_CONFIGS, SEG_CONFIGS, det_config, require, seg_config

from classification.models.directions import (LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_SMALL_DIRECTIONS,
                                              LOCAL_VSSM_TINY_DIRECTIONS)

EXPECTED_DET = {
    'lsj-100e_coco-instance.py', 'vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py',
    'vitdet_cascade_mask-rcnn_local_vim_small_lsj-100e.py', 'mask_rcnn_local_vssm_tiny_fpn_coco.py',
    'mask_rcnn_local_vssm_small_fpn_coco.py', 'mask_rcnn_local_vssm_tiny_fpn_coco_ms_3x.py',
    'mask_rcnn_local_vssm_small_fpn_coco_ms_3x.py'}
EXPECTED_SEG = {
    'upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py', 'upernet_local_vim-small_8xb2-160k_ade20k-512x512.py',
    'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py', 'upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py',
    'mask2former_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'}


def _as_table(directions):
    return tuple(tuple(d) for d in directions)


def test_the_original_config_files_are_all_here():
    assert {os.path.basename(p) for p in DET_CONFIGS} == EXPECTED_DET
    assert {os.path.basename(p) for p in SEG_CONFIGS} == EXPECTED_SEG


@functools.lru_cache(maxsize=None)
def _classification_shapes(model_name: str, **kwargs) -> dict:
    import timm
    return {k: v.shape for k, v in timm.create_model(model_name, **kwargs).state_dict().items()}


def _check_backbone(backbone, model_name, **kwargs):
    """The backbone's keys are the classification model's (built at 224), minus its classifier, plus the per-output
    norms; every shape matches except the position tables, which are sized for the detection/segmentation grid."""
    reference = _classification_shapes(model_name, **kwargs)
    own = backbone.state_dict()
    if model_name.startswith('local_vim'):
        dropped = {k for k in reference if k.startswith(('head.', 'norm_f.'))}
        added = {f'outnorm_{j}.{p}' for j in range(len(backbone.out_indices)) for p in ('weight', 'bias')}
        resized = {'pos_embed', 'rope.freqs_cos', 'rope.freqs_sin'}
    else:
        dropped = {k for k in reference if k.startswith('classifier.')}
        added = {f'outnorm{i}.{p}' for i in backbone.out_indices for p in ('weight', 'bias')}
        resized = set()
    assert set(own) == (set(reference) - dropped) | added
    assert [k for k in set(own) & set(reference) - resized if own[k].shape != reference[k]] == []


@pytest.mark.parametrize('path', [p for p in DET_CONFIGS if 'lsj-100e_coco' not in os.path.basename(p)],
                         ids=os.path.basename)
def test_detection_config_builds(path):
    require('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = det_config(os.path.basename(path))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    name = os.path.basename(path)
    assert type(model).__name__ == 'MaskRCNN'
    assert cfg.get('pretrained') is None         # no leftover of the base's Swin weights beside the backbone's file
    size = 'tiny' if 'tiny' in name else 'small'
    if 'local_vim' in name:
        assert _as_table(cfg.model.backbone.directions) == LOCAL_VIM_TINY_DIRECTIONS
        assert type(model.neck).__name__ == 'SimpleFPN' and model.backbone.out_indices == [19]
        keys = model.neck.state_dict()   # ViTDet's LN2d layers sit under mmcv's 'norm_layer' (the checkpoints' keys)
        assert {'lateral_convs.0.norm_layer.weight', 'fpn_convs.3.norm_layer.bias'} <= set(keys)
        _check_backbone(model.backbone, f'local_vim_{size}_searched' if size == 'small' else 'local_vim_tiny',
                        rms_norm=False)
    else:
        table = LOCAL_VSSM_TINY_DIRECTIONS if size == 'tiny' else LOCAL_VSSM_SMALL_DIRECTIONS
        assert _as_table(cfg.model.backbone.directions) == table
        _check_backbone(model.backbone, f'local_vssm_{size}')


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=os.path.basename)
def test_segmentation_config_builds(path):
    require('mmseg')
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = seg_config(os.path.basename(path))
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    name = os.path.basename(path)
    head = 'Mask2FormerHead' if name.startswith('mask2former') else 'UPerHead'
    assert type(model).__name__ == 'EncoderDecoder' and type(model.decode_head).__name__ == head
    size = 'tiny' if 'tiny' in name else 'small'
    if 'local_vim' in name:
        assert _as_table(cfg.model.backbone.directions) == LOCAL_VIM_TINY_DIRECTIONS
        assert model.backbone.out_indices == [4, 9, 14, 19] and not model.with_neck
        _check_backbone(model.backbone, f'local_vim_{size}_searched' if size == 'small' else 'local_vim_tiny',
                        rms_norm=False)
    else:
        table = LOCAL_VSSM_TINY_DIRECTIONS if size == 'tiny' else LOCAL_VSSM_SMALL_DIRECTIONS
        assert _as_table(cfg.model.backbone.directions) == table
        _check_backbone(model.backbone, f'local_vssm_{size}')


def test_vitdet_layer_decay_reproduces_the_original_groups():
    """With the original's ViT rule only the patch/position embeddings are decayed (0.7^13), only pos_embed escapes
    weight decay; with layer_key='layers' LocalVim gets a real per-layer decay."""
    require('mmdet')
    import detection.local_mamba  # noqa: F401  (registers the constructor)
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    cfg = det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py')
    init_default_scope('mmdet')
    cfg.model.backbone.update(depth=2, directions=cfg.model.backbone.directions[:2], out_indices=[1], img_size=64)
    model = MODELS.build(cfg.model)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    scale = {n: g['lr'] / 1e-4 for g in groups for n in g['param_names']}
    decay = {n: g['weight_decay'] for g in groups for n in g['param_names']}
    assert scale['backbone.patch_embed.proj.weight'] == pytest.approx(0.7 ** 13)
    assert scale['backbone.pos_embed'] == pytest.approx(0.7 ** 13)
    assert all(s == 1.0 for n, s in scale.items() if 'patch_embed' not in n and 'pos_embed' not in n)
    assert [n for n, d in decay.items() if d == 0] == ['backbone.pos_embed']
    assert {g['group_name'] for g in groups} == {'layer_0_decay', 'layer_0_no_decay_pos_embed', 'layer_13_decay'}
    assert cfg.optim_wrapper.type == 'OptimWrapper' and cfg.optim_wrapper.clip_grad.max_norm == 35

    cfg.optim_wrapper.paramwise_cfg.update(layer_key='layers', num_layers=2)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    scale = {n: g['lr'] / 1e-4 for g in groups for n in g['param_names']}
    assert scale['backbone.layers.0.mixer.in_proj.weight'] == pytest.approx(0.7 ** 2)
    assert scale['backbone.layers.1.mixer.in_proj.weight'] == pytest.approx(0.7)
    assert scale['neck.fpn1.0.weight'] == pytest.approx(1.0)
    # The original's rule: the norms under backbone.<layer_key> (here LocalVim's layers) escape weight decay, in
    # their layer's 'no_decay' group; the output norms and the neck's norms do not.
    decay = {n: g['weight_decay'] for g in groups for n in g['param_names']}
    group = {n: g['group_name'] for g in groups for n in g['param_names']}
    layer_norms = [n for n in decay if n.startswith('backbone.layers.') and 'norm' in n]
    assert {'backbone.layers.0.norm.weight', 'backbone.layers.1.norm.bias'} <= set(layer_norms)
    assert [n for n, d in decay.items() if d == 0] == ['backbone.pos_embed'] + layer_norms
    assert group['backbone.layers.1.norm.weight'] == 'layer_2_no_decay'
    assert decay['backbone.outnorm_0.weight'] == 0.05 and decay['backbone.layers.1.mixer.in_proj.weight'] == 0.05


def test_segmentation_plugin_needs_no_mmdet():
    """segmentation.local_mamba registers the shared backbones in mmseg without importing mmdet."""
    require('mmseg')
    code = ('import sys, segmentation.local_mamba; assert "mmdet" not in sys.modules, "mmdet imported"; '
            'from mmseg.registry import MODELS; '
            'assert MODELS.get("MM_LocalVim").__module__ == "classification.dense.backbones"; '
            'assert not MODELS.get("MM_LocalVim").bare_single_map; '
            'assert MODELS.get("MM_LocalVSSM").__module__ == "classification.dense.backbones"; '
            'assert not any(m == "detection" or m.startswith("detection.") for m in sys.modules), "detection imported"')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _pipeline_step(pipeline, kind):
    steps = [step for step in pipeline if step['type'] == kind]
    assert len(steps) == 1, (kind, pipeline)
    return steps[0]


# The original det/seg configs' training values (upstream-facts §7.2 / §7.3), by config: backbone, neck / heads,
# optimiser, schedule, batch and data.
_VITDET = dict(optim=('AdamW', 1e-4, (0.9, 0.999), 0.05),
               decay=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=12))
_VSSM_DET_OPTIM = ('AdamW', 1e-4, (0.9, 0.999), 0.05)
_SEG_OPTIM = ('AdamW', 6e-5, (0.9, 0.999), 0.01)


def _optimizer(cfg):
    opt = cfg.optim_wrapper.optimizer
    return opt.type, opt.lr, tuple(opt.betas), opt.weight_decay


def _schedulers(cfg):
    return [{k: v for k, v in s.items() if k != '_scope_'} for s in cfg.param_scheduler]


@pytest.mark.parametrize('name, width, batch', [('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py', 192, 2),
                                                ('vitdet_cascade_mask-rcnn_local_vim_small_lsj-100e.py', 384, 1)])
def test_vitdet_configs_keep_the_originals_training_values(name, width, batch):
    cfg = det_config(name)
    backbone = cfg.model.backbone
    assert (backbone.embed_dim, backbone.depth, backbone.drop_path_rate, tuple(backbone.img_size)) == (
        width, 20, 0.1, (1024, 1024))
    assert (backbone.rms_norm, backbone.fused_add_norm, backbone.out_indices) == (False, False, [19])
    assert (cfg.model.neck.backbone_channel, cfg.model.neck.in_channels) == (
        width, [width // 4, width // 2, width, width])
    assert _optimizer(cfg) == _VITDET['optim']
    assert {k: cfg.optim_wrapper.paramwise_cfg[k] for k in _VITDET['decay']} == _VITDET['decay']
    assert cfg.optim_wrapper.constructor == 'LayerDecayOptimizerConstructor'
    assert _schedulers(cfg) == [
        dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
        dict(type='MultiStepLR', begin=0, end=184375, by_epoch=False, milestones=[163889, 177546], gamma=0.1)]
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.train_dataloader.batch_size) == (
        184375, 5000, batch)
    resize = _pipeline_step(cfg.train_pipeline, 'RandomResize')
    assert (tuple(resize.scale), tuple(resize.ratio_range)) == ((1024, 1024), (0.1, 2.0))
    assert tuple(_pipeline_step(cfg.train_pipeline, 'RandomCrop').crop_size) == (1024, 1024)
    pad = _pipeline_step(cfg.train_pipeline, 'Pad')
    assert (tuple(pad.size), tuple(pad.pad_val.img)) == ((1024, 1024), (114, 114, 114))


@pytest.mark.parametrize('name, depths, epochs, milestones', [
    ('mask_rcnn_local_vssm_tiny_fpn_coco.py', (2, 2, 9, 2), 12, [8, 11]),
    ('mask_rcnn_local_vssm_small_fpn_coco.py', (2, 2, 27, 2), 12, [8, 11]),
    ('mask_rcnn_local_vssm_tiny_fpn_coco_ms_3x.py', (2, 2, 9, 2), 36, [27, 33]),
    ('mask_rcnn_local_vssm_small_fpn_coco_ms_3x.py', (2, 2, 27, 2), 36, [27, 33])])
def test_local_vssm_detection_configs_keep_the_originals_training_values(name, depths, epochs, milestones):
    cfg = det_config(name)
    backbone = cfg.model.backbone
    assert (backbone.dims, tuple(backbone.depths), backbone.drop_path_rate, tuple(backbone.out_indices)) == (
        96, depths, 0.2, (0, 1, 2, 3))
    assert (backbone.ssm_d_state, backbone.ssm_ratio, backbone.ssm_dt_rank) == (16, 2.0, 'auto')
    assert cfg.model.neck.in_channels == [96, 192, 384, 768]
    assert _optimizer(cfg) == _VSSM_DET_OPTIM and cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert {k: v.decay_mult for k, v in cfg.optim_wrapper.paramwise_cfg.custom_keys.items()} == {
        'absolute_pos_embed': 0.0, 'relative_position_bias_table': 0.0, 'norm': 0.0}
    linear, steps = _schedulers(cfg)
    assert linear == dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000)
    assert (steps['type'], steps['milestones'], steps['gamma'], steps['end']) == (
        'MultiStepLR', milestones, 0.1, epochs)
    assert (cfg.train_cfg.max_epochs, cfg.train_dataloader.batch_size) == (epochs, 2)


@pytest.mark.parametrize('name, channels, drop_path, amp', [
    ('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py', [192] * 4, 0.1, False),
    ('upernet_local_vim-small_8xb2-160k_ade20k-512x512.py', [384] * 4, 0.1, False),
    ('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py', [96, 192, 384, 768], 0.1, False),
    ('upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py', [96, 192, 384, 768], 0.2, True)])
def test_segmentation_configs_keep_the_originals_training_values(name, channels, drop_path, amp):
    cfg = seg_config(name)
    backbone, head, aux = cfg.model.backbone, cfg.model.decode_head, cfg.model.auxiliary_head
    assert backbone.drop_path_rate == drop_path
    if 'local_vim' in name:
        assert (backbone.embed_dim, backbone.depth, backbone.out_indices, tuple(backbone.img_size)) == (
            channels[0], 20, [4, 9, 14, 19], (512, 512))
        assert (backbone.rms_norm, backbone.fused_add_norm) == (False, False)
    else:
        assert (backbone.dims, tuple(backbone.depths)) == (96, (2, 2, 9, 2) if 'tiny' in name else (2, 2, 27, 2))
    assert (head.in_channels, head.channels, tuple(head.pool_scales), head.num_classes) == (
        channels, 512, (1, 2, 3, 6), 150)
    aux_input = (channels[0], 3) if 'local_vim' in name else (384, 2)   # FCN aux head on layer 19 / stage 2
    assert (aux.in_channels, aux.in_index, aux.num_classes) == (*aux_input, 150)
    assert _optimizer(cfg) == _SEG_OPTIM
    assert (cfg.optim_wrapper.type == 'AmpOptimWrapper') == amp
    assert _schedulers(cfg) == [
        dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
        dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)]
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.train_dataloader.batch_size) == (
        160000, 16000, 2)
    assert tuple(cfg.crop_size) == (512, 512) and tuple(cfg.model.data_preprocessor.size) == (512, 512)
    resize = _pipeline_step(cfg.train_pipeline, 'RandomResize')
    assert (tuple(resize.scale), tuple(resize.ratio_range)) == ((2048, 512), (0.5, 2.0))
    crop = _pipeline_step(cfg.train_pipeline, 'RandomCrop')
    assert (tuple(crop.crop_size), crop.cat_max_ratio) == ((512, 512), 0.75)
    assert tuple(_pipeline_step(cfg.test_pipeline, 'Resize').scale) == (2048, 512)
    assert cfg.model.test_cfg.mode == 'whole'


def test_the_mask2former_config_keeps_local_vssm_tinys_backbone_and_mmsegs_swin_t_training_values():
    """LocalVMamba-T as in the UperNet config, mmseg's Swin-T Mask2Former recipe around it: AdamW 1e-4, the backbone
    at a tenth of it, gradients clipped at 0.01, a poly schedule of power 0.9 over 160k iterations; no weight decay on
    any norm (the backbone's too, as the recipe's Swin keys did on Swin) nor on the queries' and levels' embeddings."""
    require('mmseg')
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = seg_config('mask2former_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    upernet = seg_config('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    assert cfg.model.backbone == upernet.model.backbone
    head = cfg.model.decode_head
    assert (head.in_channels, head.num_classes, head.num_queries, head.num_transformer_feat_level) == (
        [96, 192, 384, 768], 150, 100, 3)
    assert cfg.get('pretrained') is None
    assert _optimizer(cfg) == ('AdamW', 1e-4, (0.9, 0.999), 0.05) and cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.optim_wrapper.clip_grad.max_norm == 0.01
    assert _schedulers(cfg) == [dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=160000, by_epoch=False)]
    assert (cfg.train_cfg.max_iters, cfg.train_dataloader.batch_size) == (160000, 2)
    assert tuple(cfg.crop_size) == (512, 512) and tuple(cfg.model.data_preprocessor.size) == (512, 512)

    cfg.model.backbone.pretrained = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    norms = {f'{name}.{key}' for name, module in model.named_modules() if 'Norm' in type(module).__name__
             for key, _ in module.named_parameters(recurse=False)}
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    settings = {names[id(p)]: (g['lr'], g['weight_decay']) for g in groups for p in g['params']}
    embeddings = {f'decode_head.{key}.weight' for key in ('query_embed', 'query_feat', 'level_embed')}
    for name, (lr, decay) in settings.items():
        assert lr == pytest.approx(1e-5 if name.startswith('backbone.') else 1e-4), name
        assert decay == (0.0 if name in norms or name in embeddings else 0.05), name
    assert sum(name.startswith('backbone.') and name in norms for name in settings) == 2 * 53   # 53 LayerNorms
