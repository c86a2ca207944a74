"""Facts of the det/seg internals that a mutation audit found unpinned: ViTDet's SimpleFPN written out, the layer-decay
groups of a hand-made model against their formula, the backbones' pretrained-file and setting checks, the run-input
checks of the det/seg tools, and the checkpoint hooks. Each test kills a mutant the other tests let through."""
import argparse
import logging
import os
import pathlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, require

require('mmdet')
require('mmseg')

from classification.common import CheckpointError  # noqa: E402
from classification.dense import MM_LocalVSSM, backbones, launch, map_fit, run_inputs  # noqa: E402
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS, save_directions  # noqa: E402
from classification.models.local_vmamba import VSSM  # noqa: E402

SEG_CONFIG = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
VSSM_ARGS = dict(dims=8, depths=(1, 1, 1, 1), directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])


def _mmdet_models():
    import detection.local_mamba  # noqa: F401  (registers the ViTDet pieces)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    return MODELS


# ---------------------------------------------------------------------------------------------------------------------
# SimpleFPN


def _ln2d(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """LayerNorm over the channels of an NCHW map with eps 1e-5 (mmcv's build_norm_layer), written out."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * norm.weight[:, None, None] + norm.bias[:, None, None]


def _simple_fpn(num_outs: int):
    neck = _mmdet_models().build(dict(type='SimpleFPN', backbone_channel=16, in_channels=[4, 8, 16, 16],
                                      out_channels=8, num_outs=num_outs, norm_cfg=dict(type='LN2d',
                                                                                       requires_grad=True)))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in neck.parameters():
            param.normal_()
    return neck.double().eval()


def test_simple_fpn_is_vitdets_pyramid_written_out():
    """Level 0 is deconv, LN2d, GELU, deconv; level 1 one deconv; level 2 the map; level 3 its 2x2 max; each through
    a 1x1 lateral and a 3x3 output conv, both LN2d'd without bias or activation; levels 4 and 5 take every second pixel
    of the level before. The tests of shapes let a pyramid without GELU or without the first norm through."""
    neck = _simple_fpn(num_outs=6)
    x = torch.randn(2, 16, 6, 10, dtype=torch.float64)

    def deconv(layer, t):
        return F.conv_transpose2d(t, layer.weight, layer.bias, stride=2)

    up4 = deconv(neck.fpn1[3], F.gelu(_ln2d(deconv(neck.fpn1[0], x), neck.fpn1[1])))
    levels = [up4, deconv(neck.fpn2[0], x), x, x.unflatten(2, (3, 2)).unflatten(4, (5, 2)).amax(dim=(3, 5))]
    expected = []
    for level, lateral, out_conv in zip(levels, neck.lateral_convs, neck.fpn_convs):
        assert lateral.conv.bias is None and out_conv.conv.bias is None and not lateral.with_activation
        hidden = _ln2d(F.conv2d(level, lateral.conv.weight), lateral.norm_layer)
        expected.append(_ln2d(F.conv2d(hidden, out_conv.conv.weight, padding=1), out_conv.norm_layer))
    expected.append(expected[-1][..., ::2, ::2])
    expected.append(expected[-1][..., ::2, ::2])
    with torch.no_grad():
        outs = neck(x)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 24, 40), (2, 8, 12, 20), (2, 8, 6, 10), (2, 8, 3, 5),
                                              (2, 8, 2, 3), (2, 8, 1, 2)]
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref)


def test_simple_fpn_refuses_in_channels_other_than_a_quarter_a_half_and_twice_the_width():
    with pytest.raises(ValueError, match=r'in_channels must be \[4, 8, 16, 16\] for backbone_channel=16, got '
                                         r'\[16, 16, 16, 16\]'):
        _mmdet_models().build(dict(type='SimpleFPN', backbone_channel=16, in_channels=[16, 16, 16, 16],
                                   out_channels=8, num_outs=5, norm_cfg=dict(type='LN2d')))


# ---------------------------------------------------------------------------------------------------------------------
# LayerDecayOptimizerConstructor


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(2)
        self.fc = nn.Linear(2, 2)


class _Detector(nn.Module):
    """A ViT-named backbone (patch_embed, pos_embed, blocks.<i>, a frozen part) and a neck with a position table of
    its own (as DETR-like necks have)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.patch_embed = nn.Linear(2, 2)
        self.backbone.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))
        self.backbone.blocks = nn.ModuleList([_Block(), _Block()])
        self.backbone.frozen = nn.Linear(2, 2)
        self.backbone.frozen.requires_grad_(False)
        self.neck = nn.Module()
        self.neck.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))
        self.neck.norm = nn.LayerNorm(2)


def _layer_decay_groups(**paramwise_cfg):
    from mmengine.optim import build_optim_wrapper
    _mmdet_models()
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.1),
               constructor='LayerDecayOptimizerConstructor', paramwise_cfg=paramwise_cfg)
    return build_optim_wrapper(_Detector(), cfg).optimizer.param_groups


def test_layer_decay_groups_follow_the_formula_name_by_name():
    """decay_rate 0.5, num_layers 2: layer id 0 for the backbone's patch and position embeddings, i + 1 for
    backbone.blocks.<i>, 3 for everything else (a neck's pos_embed too), lr scale 0.5 ** (3 - id); no weight decay for
    the norms under backbone.blocks and for every pos_embed; frozen parameters in no group."""
    groups = _layer_decay_groups(num_layers=2, decay_rate=0.5)
    found = {name: (g['group_name'], g['lr_scale'], g['lr'], g['weight_decay'])
             for g in groups for name in g['param_names']}
    expected = {
        'backbone.patch_embed.weight': ('layer_0_decay', 0.125, 0.1), 'backbone.patch_embed.bias': ('layer_0_decay',
                                                                                                    0.125, 0.1),
        'backbone.pos_embed': ('layer_0_no_decay_pos_embed', 0.125, 0.),
        'backbone.blocks.0.norm.weight': ('layer_1_no_decay', 0.25, 0.), 'backbone.blocks.0.norm.bias': (
            'layer_1_no_decay', 0.25, 0.),
        'backbone.blocks.0.fc.weight': ('layer_1_decay', 0.25, 0.1), 'backbone.blocks.0.fc.bias': ('layer_1_decay',
                                                                                                   0.25, 0.1),
        'backbone.blocks.1.norm.weight': ('layer_2_no_decay', 0.5, 0.), 'backbone.blocks.1.norm.bias': (
            'layer_2_no_decay', 0.5, 0.),
        'backbone.blocks.1.fc.weight': ('layer_2_decay', 0.5, 0.1), 'backbone.blocks.1.fc.bias': ('layer_2_decay',
                                                                                                  0.5, 0.1),
        'neck.pos_embed': ('layer_3_no_decay_pos_embed', 1.0, 0.),
        'neck.norm.weight': ('layer_3_decay', 1.0, 0.1), 'neck.norm.bias': ('layer_3_decay', 1.0, 0.1),
    }
    assert sorted(found) == sorted(expected)
    for name, (group, scale, decay) in expected.items():
        assert found[name] == (group, pytest.approx(scale), pytest.approx(scale * 1e-3), decay), name
    assert sum(len(g['params']) for g in groups) == len(expected)


def test_layer_decay_refuses_a_paramwise_key_it_does_not_take():
    with pytest.raises(ValueError, match=r"supports decay_type='layer_wise' and the keys num_layers, decay_rate, "
                                         r"layer_key; got .*'decay_rat'"):
        _layer_decay_groups(num_layers=2, decay_rate=0.5, decay_rat=0.7)


@pytest.mark.parametrize('rank, logged', [(0, 1), (1, 0)])
def test_layer_decay_groups_are_logged_by_the_first_process_only(monkeypatch, rank, logged):
    from detection import vitdet
    lines = []
    monkeypatch.setattr(vitdet, 'get_dist_info', lambda: (rank, 2))
    monkeypatch.setattr(vitdet, 'MMLogger', SimpleNamespace(get_current_instance=lambda: SimpleNamespace(
        info=lines.append)))
    _layer_decay_groups(num_layers=2, decay_rate=0.5)
    assert len(lines) == logged
    if logged:
        assert lines[0].startswith('layer-decay parameter groups: {') and '"backbone.pos_embed"' in lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# The backbones' settings and pretrained files


def test_a_directions_file_given_as_a_path_object_is_read_for_its_warnings(tmp_path, monkeypatch):
    """``directions=pathlib.Path(...)`` (a PathLike, as the directions loader takes) was built without the warning a
    str path gives for a file of an unfinished search."""
    logged = []
    monkeypatch.setattr(backbones, '_log', lambda message, level=logging.INFO: logged.append((level, message)))
    path = tmp_path / 'directions.yaml'
    save_directions(path, VSSM_ARGS['directions'], supernet='local_vssm_tiny_search', topk=4,
                    searched_from={'model_kwargs': {'depths': [1, 1, 1, 1]}, 'finished': False,
                                   'unfinished': 'saved after step 3'})
    MM_LocalVSSM(**dict(VSSM_ARGS, directions=pathlib.Path(path)))
    assert logged == [(logging.WARNING, f'{path} holds the directions of an unfinished search (saved after step 3)')]


@pytest.mark.parametrize('setting, value', [('downsample_version', 'v3'), ('patchembed_version', 'v2'),
                                            ('mlp_ratio', 4.0)])
def test_local_vssm_refuses_the_original_settings_it_has_no_code_for(setting, value):
    with pytest.raises(ValueError, match="mlp_ratio must be 0.0 and the versions 'v1'"):
        MM_LocalVSSM(**VSSM_ARGS, **{setting: value})


def test_one_file_named_by_two_settings_is_one_file_and_an_empty_name_is_none():
    """The same file as pretrained and as init_cfg's checkpoint loads; pretrained='' (``--cfg-options
    model.backbone.pretrained=``) names no file, as None."""
    same = dict(type='MM_LocalVSSM', pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a.pth'))
    files = backbones.pretrained_files(same)
    assert files == {'pretrained': 'a.pth', 'init_cfg.checkpoint': 'a.pth'}
    assert backbones.two_pretrained_message('MM_LocalVSSM', files) is None
    assert MM_LocalVSSM(pretrained='', **VSSM_ARGS).pretrained is None
    assert backbones.pretrained_files(dict(pretrained='', pretrained_ckpt=None)) == {}
    assert run_inputs.missing_pretrained(dict(backbone=dict(type='MM_LocalVSSM', pretrained=''))) is None
    three = dict(pretrained='a.pth', pretrained_ckpt='b.pth', init_cfg=dict(type='Pretrained', checkpoint='c.pth'))
    assert backbones.two_pretrained_message('MM_LocalVSSM', backbones.pretrained_files(three)).endswith(
        '(set the others to None)')


def test_the_load_line_counts_the_tensors_loaded_and_a_misfit_counts_those_not_shown(tmp_path, monkeypatch):
    torch.manual_seed(0)
    logged = []
    monkeypatch.setattr(backbones, '_log', lambda message, level=logging.INFO: logged.append(message))
    weights = VSSM(**VSSM_ARGS).state_dict()
    path = tmp_path / 'vssm.pth'
    torch.save({'state_dict': {**weights, 'extra.weight': torch.zeros(1)}}, path)
    MM_LocalVSSM(pretrained=str(path), **VSSM_ARGS).init_weights()
    classifier = [k for k in weights if k.startswith('classifier.')]
    assert classifier and f'MM_LocalVSSM: loaded {len(weights) - len(classifier)} tensors from {path}' in logged

    wide = tmp_path / 'wide.pth'
    torch.save({'state_dict': VSSM(**dict(VSSM_ARGS, dims=16)).state_dict()}, wide)
    own = MM_LocalVSSM(**VSSM_ARGS).state_dict()
    wide_weights = torch.load(wide, weights_only=True)['state_dict']
    resized = sum(1 for k, v in wide_weights.items() if k in own and v.shape != own[k].shape)
    with pytest.raises(CheckpointError, match=rf"{resized} tensors do not fit .* and {resized - 3} more\); build"):
        MM_LocalVSSM(pretrained=str(wide), **VSSM_ARGS).init_weights()


# ---------------------------------------------------------------------------------------------------------------------
# run_inputs


def test_our_backbones_are_found_by_scoped_names_and_by_class():
    """A config may name the backbone 'mmdet.MM_LocalVSSM' or give the class itself: their pretrained files are
    checked too, named by their key (list items by index)."""
    model = dict(type='X', backbones=[dict(type='ResNet', pretrained='gone.pth'),
                                      dict(type='mmdet.MM_LocalVSSM', pretrained='gone.pth')])
    assert run_inputs.missing_pretrained(model) == (
        'MM_LocalVSSM: pretrained checkpoint not found: gone.pth (set model.backbones.1.pretrained to your file, or '
        'to None to start from random weights)')
    assert run_inputs.is_backbone(dict(type=MM_LocalVSSM)) and not run_inputs.is_backbone(dict(type=nn.Linear))
    assert run_inputs.missing_pretrained(dict(backbone=dict(type=MM_LocalVSSM, pretrained_ckpt='gone.pth'))) == (
        'MM_LocalVSSM: pretrained checkpoint not found: gone.pth (set model.backbone.pretrained_ckpt to your file, or '
        'to None to start from random weights)')


def test_a_config_of_comments_only_is_empty(tmp_path):
    path = tmp_path / 'comments.py'
    path.write_text('# model = dict()\n\n   # more\n')
    assert run_inputs.config_file_problem(str(path)) == f'{path}: the config is empty'
    path.write_text('# a comment\nx = 1\n')
    assert run_inputs.config_file_problem(str(path)) is None


def test_a_checkpoint_folder_names_its_first_four_files_and_a_url_is_not_checked(tmp_path):
    for i in range(4):
        (tmp_path / f'iter_{i}.pth').write_bytes(b'')
    assert run_inputs.missing_checkpoint(str(tmp_path)) == (
        f'{tmp_path} is a folder: give one of its checkpoint files (iter_0.pth, iter_1.pth, iter_2.pth, iter_3.pth)')
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    assert run_inputs.missing_checkpoint(str(tmp_path), '--resume').endswith('(iter_0.pth, iter_1.pth, iter_2.pth, '
                                                                             'iter_3.pth, ...)')
    assert run_inputs.missing_checkpoint('https://example.com/run/iter_8.pth') is None


def test_datasets_and_metrics_read_through_a_storage_backend_are_not_checked(tmp_path):
    backend = dict(backend='petrel')
    dataset = dict(type='CocoDataset', data_root='gone/coco/', ann_file='annotations/train.json', backend_args=backend)
    assert run_inputs.missing_data_path({'train_dataloader': dict(dataset=dataset)}, ['train_dataloader']) is None
    metric = dict(type='CocoMetric', ann_file='gone/coco/val.json', backend_args=backend)
    assert run_inputs.missing_data_path({'val_dataloader': dict(batch_size=1), 'val_evaluator': metric},
                                        ['val_dataloader']) is None
    local = dict(metric, backend_args=None)
    assert run_inputs.missing_data_path({'val_dataloader': dict(batch_size=1), 'val_evaluator': local},
                                        ['val_dataloader']).startswith('val_evaluator.ann_file: gone/coco/val.json')


def test_a_cfg_options_list_index_past_the_end_is_a_new_key():
    from mmengine.config import Config
    cfg = Config(dict(steps=[1, 2], flag=True))
    assert run_inputs.new_option_keys(cfg, {'steps.1': 3, 'steps.2': 4, 'flag': False}) == ['steps.2']
    assert run_inputs.wrong_type_option(cfg, {'steps.2': 'x'}) is None


# ---------------------------------------------------------------------------------------------------------------------
# mm_checkpoint hooks


class _Trunk(nn.Module):
    directions = (('h', 'v'),)

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)


def _model_with_trunk() -> nn.Module:
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.trunk = _Trunk()
    return model


def test_the_backbone_is_found_through_a_tta_wrapper_and_other_backbones_record_no_directions():
    from mmengine.model import BaseTTAModel

    from classification.dense.mm_checkpoint import ScanDirectionsHook, backbone_trunk

    class TTA(BaseTTAModel):
        def merge_preds(self, data_samples_list):
            return data_samples_list

    model = _model_with_trunk()
    model.test_step = lambda data: data     # what BaseTTAModel asks of the model it wraps
    assert backbone_trunk(TTA(module=model)) is model.backbone.trunk
    plain = nn.Module()
    plain.backbone = nn.Linear(2, 2)
    checkpoint = {}
    ScanDirectionsHook().before_save_checkpoint(SimpleNamespace(model=plain), checkpoint)
    assert checkpoint == {}


def test_a_checkpoint_of_other_directions_is_named_in_the_advice_when_it_is_a_file(tmp_path):
    from classification.dense.mm_checkpoint import CheckpointFitHook
    model = _model_with_trunk()
    checkpoint = {'state_dict': model.state_dict(), 'directions': [['w2']]}
    path = tmp_path / 'iter_2.pth'
    path.write_bytes(b'')
    for source, named in ((str(path), str(path)), ('https://example.com/iter_2.pth', 'CHECKPOINT')):
        with pytest.raises(CheckpointError) as err:
            CheckpointFitHook(source).after_load_checkpoint(SimpleNamespace(model=model), checkpoint)
        assert str(err.value).endswith(f'--cfg-options model.backbone.directions={named} (the checkpoint holds them)')


# ---------------------------------------------------------------------------------------------------------------------
# launch


def test_the_local_rank_a_launcher_set_is_kept(monkeypatch):
    """torchrun sets LOCAL_RANK; --local_rank (the default 0 where torchrun passes none) fills it in only when it is
    unset: each process of a node else took itself for local rank 0 (and downloaded a URL at once, as all of them)."""
    from mmengine.runner import CheckpointLoader
    schemes = dict(CheckpointLoader._schemes)
    args = dict(config=SEG_CONFIG, launcher='none', cfg_options=None, work_dir=None, trust_checkpoint=False)
    try:
        monkeypatch.setenv('LOCAL_RANK', '3')
        launch._load_config(argparse.Namespace(local_rank=0, **args))
        assert os.environ['LOCAL_RANK'] == '3'
        monkeypatch.delenv('LOCAL_RANK')
        launch._load_config(argparse.Namespace(local_rank=2, **args))
        assert os.environ['LOCAL_RANK'] == '2'
    finally:
        CheckpointLoader._schemes = schemes


def test_a_work_dirs_checkpoints_are_named_four_at_most(tmp_path):
    for i in range(1, 5):
        (tmp_path / f'iter_{i}.pth').write_bytes(b'')
    with pytest.raises(launch.WorkDirError, match=r'holds a run \(iter_1.pth, iter_2.pth, iter_3.pth, iter_4.pth\);'):
        launch.claim_work_dir(str(tmp_path), overwrite=False)
    (tmp_path / 'iter_5.pth').write_bytes(b'')
    with pytest.raises(launch.WorkDirError, match=r'holds a run \(iter_1.pth, iter_2.pth, iter_3.pth, iter_4.pth, '
                                                  r'\.\.\.\);'):
        launch.claim_work_dir(str(tmp_path), overwrite=False)


def test_resuming_into_the_checkpoints_own_folder_named_another_way_goes_on(tmp_path, monkeypatch):
    """The work_dir 'run' (or './run/') and the checkpoint 'run/iter_2.pth' are one folder: refused as another run's
    folder when the two paths were compared as written."""
    monkeypatch.chdir(tmp_path)
    for folder, name in (('run', 'iter_2.pth'), ('elsewhere', 'iter_4.pth')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b'')
    for work_dir in ('run', './run/', str(tmp_path / 'run')):
        launch.check_resume_folder(work_dir, 'run/iter_2.pth')
    with pytest.raises(launch.WorkDirError, match='continues a run of another folder than elsewhere'):
        launch.check_resume_folder('elsewhere', 'run/iter_2.pth')


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm', 'mpi'])
def test_a_cpu_run_of_every_launcher_is_distributed_with_the_configs_find_unused_parameters(monkeypatch, launcher):
    import torch.distributed as dist
    from mmengine.config import Config
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    cfg = Config(dict(launcher=launcher, find_unused_parameters=True, model=dict(type='X', norm_cfg=dict(
        type='SyncBN'))))
    machine = launch._for_this_machine(cfg)
    assert machine.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                             broadcast_buffers=False, find_unused_parameters=True)
    assert machine.model.norm_cfg.type == 'BN' and cfg.model.norm_cfg.type == 'SyncBN'
    assert 'model_wrapper_cfg' not in cfg


def test_a_resumed_run_builds_the_backbone_without_its_init_cfg_file(tmp_path, ade_inputs_at_hand, monkeypatch):
    """The resumed checkpoint holds every weight: init_cfg's checkpoint, as pretrained, is not read (the runner's
    init_weights read it, and stopped where that file was not at hand)."""
    backbones_built = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        train=lambda: backbones_built.append(dict(cfg.model.backbone))))
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_8.pth').write_bytes(b'')
    (work / 'last_checkpoint').write_text(str(work / 'iter_8.pth'))
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume', '--cfg-options',
                                       'model.backbone.pretrained=None', 'model.backbone.init_cfg.type=Pretrained',
                                       'model.backbone.init_cfg.checkpoint=elsewhere/coco.pth'])
    assert [(b['pretrained'], b['init_cfg']) for b in backbones_built] == [(None, None)]


def test_resume_without_a_path_resumes_when_the_work_dir_has_a_pointer(tmp_path):
    from mmengine.config import Config
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    assert not launch.resumes_a_checkpoint(cfg)
    (tmp_path / 'last_checkpoint').write_text('s3://bucket/run/iter_8.pth')
    assert launch.resumes_a_checkpoint(cfg)
    assert not launch.resumes_a_checkpoint(Config(dict(resume=False, load_from='x.pth', work_dir=str(tmp_path))))


def segmentation_test_config(tmp_path, monkeypatch, *flags: str):
    """The config tools/test.py of segmentation would test iter_4.pth with under `flags` (its runner a stand-in)."""
    tested = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(test=lambda: tested.append(cfg)))
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    launch.test_main('segmentation', [SEG_CONFIG, 'iter_4.pth', '--work-dir', str(tmp_path / 'work'), *flags])
    (cfg,) = tested
    return cfg


def test_a_segmentation_test_with_show_dir_draws_every_image(tmp_path, ade_inputs_at_hand, monkeypatch):
    cfg = segmentation_test_config(tmp_path, monkeypatch, '--show-dir', 'shown')
    hook = cfg.default_hooks.visualization
    assert (hook.draw, hook.interval, cfg.visualizer.save_dir) == (True, 1, 'shown')


def test_amp_on_a_gpu_machine_trains_with_a_dynamic_loss_scale(tmp_path, ade_inputs_at_hand, monkeypatch):
    trained = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(train=lambda: trained.append(cfg)))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(tmp_path / 'work'), '--amp'])
    (cfg,) = trained
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale) == ('AmpOptimWrapper', 'dynamic')


def test_overwrite_with_a_resume_path_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [SEG_CONFIG, '--resume', 'run/iter_2.pth', '--overwrite'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        'error: --overwrite starts a run afresh and --resume continues one: give only one of them')


# ---------------------------------------------------------------------------------------------------------------------
# Second audit: run_inputs, mm_checkpoint and launch


def test_a_work_dir_that_exists_but_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """A read-only work_dir (a shared folder of another user) made makedirs succeed: only the write test tells."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(run_inputs.tempfile, 'TemporaryFile', refuse)
    assert run_inputs.work_dir_problem(str(tmp_path)) == f'cannot write to work_dir {tmp_path}: Permission denied'


def test_an_annotation_file_that_is_a_folder_is_not_found(tmp_path):
    (tmp_path / 'annotations').mkdir()
    dataset = dict(type='CocoDataset', data_root=str(tmp_path), ann_file='annotations')
    assert run_inputs.missing_data_path({'train_dataloader': dict(dataset=dataset)}, ['train_dataloader']) == (
        f"train_dataloader.dataset.ann_file: {tmp_path / 'annotations'} not found")


def test_negative_head_indices_past_the_first_map_are_out_of_range():
    model = dict(backbone=dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1), out_indices=(2, 3)), neck=None,
                 decode_head=dict(type='UPerHead', in_index=[-3, -1], in_channels=[16, 64]))
    assert map_fit.neck_input_problem(model).endswith(
        'set --cfg-options model.decode_head.in_index=[0,1] model.decode_head.in_channels=[32,64]')
    model['decode_head'].update(in_index=[-2, -1], in_channels=[32, 64])
    assert map_fit.neck_input_problem(model) is None


def test_a_misfit_shows_two_resized_tensors_and_three_missing_ones():
    from classification.dense.mm_checkpoint import misfit
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4), nn.Linear(4, 5))
    weights = {'module.0.weight': torch.zeros(1, 1), 'module.0.bias': torch.zeros(1), '1.weight': torch.zeros(1),
               'step': 3}
    assert misfit(model, weights) == (
        "3 tensors of other shapes (0.weight: checkpoint (1, 1), model (3, 2); 0.bias: checkpoint (1,), model (3,)), "
        "3 of the model's 6 tensors missing (1.bias, 2.weight, 2.bias)")


def test_a_configs_own_work_dir_is_kept_and_the_command_lines_wins(tmp_path, monkeypatch):
    """Without --work-dir the config's work_dir (set in it or by --cfg-options) is the run's; work_dirs/<name> only
    when it sets none."""
    from mmengine.runner import CheckpointLoader
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    args = dict(config=SEG_CONFIG, launcher='none', local_rank=0, trust_checkpoint=False)
    own = str(tmp_path / 'own')
    cfg = launch._load_config(argparse.Namespace(cfg_options={'work_dir': own}, work_dir=None, **args))
    assert cfg.work_dir == own
    cfg = launch._load_config(argparse.Namespace(cfg_options={'work_dir': own}, work_dir='cli', **args))
    assert cfg.work_dir == 'cli'


def test_auto_scale_lr_turns_the_configs_scaling_on_or_asks_for_its_base_batch_size(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(train=lambda: trained.append(cfg)))
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(tmp_path / 'a'), '--auto-scale-lr'])
    assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (
        2, 'error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
    scaled = tmp_path / 'scaled.py'
    scaled.write_text(f'_base_ = {SEG_CONFIG!r}\nauto_scale_lr = dict(enable=False, base_batch_size=16)\n')
    launch.train_main('segmentation', [str(scaled), '--work-dir', str(tmp_path / 'b'), '--auto-scale-lr'])
    (cfg,) = trained
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)


def test_a_tta_test_wraps_the_configs_model_in_its_tta_model(tmp_path, ade_inputs_at_hand, monkeypatch):
    cfg = segmentation_test_config(tmp_path, monkeypatch, '--tta')
    assert (cfg.model.type, cfg.model.module.type, cfg.model.module.backbone.type) == (
        'SegTTAModel', 'EncoderDecoder', 'MM_LocalVSSM')
    assert cfg.test_dataloader.dataset.pipeline == cfg.tta_pipeline


def test_a_tta_test_of_a_config_without_tta_settings_is_one_line(tmp_path, monkeypatch, capsys):
    """mmdet's Mask R-CNN configs have no tta_model / tta_pipeline (mmseg's ADE20K ones have both)."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('a runner was built'))
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    config = os.path.join(REPO, 'detection', 'configs', 'local_mamba', 'mask_rcnn_local_vssm_tiny_fpn_coco.py')
    with pytest.raises(SystemExit) as exited:
        launch.test_main('detection', [config, str(tmp_path / 'iter_4.pth'), '--work-dir', str(tmp_path / 'w'),
                                       '--tta'])
    assert (exited.value.code, capsys.readouterr().err) == (
        2, 'error: --tta needs tta_model and tta_pipeline in the config\n')


def test_a_test_set_without_annotations_is_tested_and_results_may_go_to_a_pickle_file(
        tmp_path, ade_inputs_at_hand, monkeypatch):
    """The test set's annotation folder is not needed (format_only test sets have none); --out of detection takes
    .pkl and .pickle."""
    import shutil
    tested = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(test=lambda: tested.append(cfg)))
    shutil.rmtree(ade_inputs_at_hand / 'data' / 'ade' / 'ADEChallengeData2016' / 'annotations')
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    launch.test_main('segmentation', [SEG_CONFIG, 'iter_4.pth', '--work-dir', str(tmp_path / 'work')])
    assert len(tested) == 1

    class PastTheOutCheck(Exception):
        pass

    def stop(*args):
        raise PastTheOutCheck
    monkeypatch.setattr(launch, '_load_config', stop)
    with pytest.raises(PastTheOutCheck):
        launch.test_main('detection', [SEG_CONFIG, 'iter_4.pth', '--out', 'results.pickle'])
    with pytest.raises(SystemExit):
        launch.test_main('detection', [SEG_CONFIG, 'iter_4.pth', '--out', 'results.json'])


def test_an_overwrite_that_fails_to_start_puts_back_the_earlier_runs_config_or_none(tmp_path):
    """The config the Runner dumps at its build stays out of a work_dir whose earlier run is only deleted once the new
    one starts: its copy, or no copy where it had none."""
    path = tmp_path / 'run.py'
    path.write_text('new run')
    launch._put_back(str(path), None)
    assert not path.exists()
    launch._put_back(str(path), None)
    launch._put_back(str(path), b'earlier run')
    assert path.read_bytes() == b'earlier run'


def test_a_segmentation_test_with_out_keeps_the_predicted_maps_there(tmp_path, ade_inputs_at_hand, monkeypatch):
    cfg = segmentation_test_config(tmp_path, monkeypatch, '--out', 'maps')
    assert (cfg.test_evaluator.output_dir, cfg.test_evaluator.keep_results) == ('maps', True)
