"""The det/seg train tool's check of the maps our backbone gives that nothing reads, in a distributed run: their
output norms get no gradient, and DistributedDataParallel (mmengine's, find_unused_parameters=False) stops at the
second iteration, also in one process. The table checks the line; the segmentor test shows the untrained norms and
the DDP stop on a real shrunk segmentor, and that both ways out of the line train."""
import copy
import os
import socket

import pytest
import torch

from conftest import REPO, apply_advice, require, seg_batch, seg_config, tiny_vssm_backbone

from classification.dense import launch, map_fit

require('mmseg')

VSSM4 = dict(type='MM_LocalVSSM', dims=8, depths=(1, 1, 1, 1), out_indices=(0, 1, 2, 3))
VSSM4_GIVES = ('model.backbone (MM_LocalVSSM, out_indices (0, 1, 2, 3)) gives 4 maps of [8, 16, 32, 64] channels '
               '(stages 0, 1, 2, 3)')
VIM3 = dict(type='MM_LocalVim', embed_dim=32, depth=3, out_indices=[0, 1, 2])
FCN = dict(type='FCNHead', in_channels=64, in_index=3)
AUX = dict(type='FCNHead', in_channels=32, in_index=2)
FPN = dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=8, num_outs=5)


def _stops(reader: str, keys: str, reads: str, unread: str, option: str = 'find_unused_parameters') -> str:
    return (f'{reader} {reads}, but {VSSM4_GIVES}: the output norms of {unread} get no gradient, and '
            f'DistributedDataParallel stops on them at the second iteration: give model.backbone.out_indices only the '
            f'maps read (and set {keys} for them), or set --cfg-options {option}=True')


# (model, extra top-level settings, the line; None: nothing to say)
CASES = {
    'fcn_heads_of_two_stages': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN, auxiliary_head=AUX), {},
        _stops('model.decode_head (FCNHead, in_index 3) and model.auxiliary_head (FCNHead, in_index 2)',
               'model.decode_head and model.auxiliary_head', 'read 2 of the maps', 'stages 0, 1')),
    'a_list_of_auxiliary_heads': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN, auxiliary_head=[AUX, dict(AUX, in_index=-3)]), {},
        _stops('model.decode_head (FCNHead, in_index 3) and model.auxiliary_head.0 (FCNHead, in_index 2) and '
               'model.auxiliary_head.1 (FCNHead, in_index -3)',
               'model.decode_head and model.auxiliary_head.0 and model.auxiliary_head.1', 'read 3 of the maps',
               'stage 0')),
    'heads_that_read_every_map': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=dict(FCN, in_index=[0, 1, 2, 3]), auxiliary_head=AUX),
        {}, None),
    'fpn_from_level_1': (
        dict(type='RetinaNet', backbone=VSSM4, neck=dict(FPN, start_level=1)), {},
        _stops('model.neck (FPN)', 'model.neck', 'reads 3 of the maps', 'stage 0')),
    'fpn_to_level_2': (
        dict(type='RetinaNet', backbone=VSSM4, neck=dict(FPN, end_level=2, num_outs=3)), {},
        _stops('model.neck (FPN)', 'model.neck', 'reads 3 of the maps', 'stage 3')),
    'fpn_of_every_level': (dict(type='RetinaNet', backbone=VSSM4, neck=FPN), {}, None),
    'dilated_encoder': (
        dict(type='YOLOF', backbone=VSSM4, neck=dict(type='DilatedEncoder', in_channels=64, out_channels=8)), {},
        _stops('model.neck (DilatedEncoder)', 'model.neck', 'reads 1 of the maps', 'stages 0, 1, 2')),
    'a_neck_that_reads_every_map': (
        dict(type='EncoderDecoder', backbone=VSSM4, neck=dict(type='MultiLevelNeck', in_channels=[8, 16, 32, 64],
                                                              out_channels=8), decode_head=FCN), {}, None),
    'find_unused_parameters': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN), dict(find_unused_parameters=True), None),
    'a_wrapper_that_finds_them': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN),
        dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel', find_unused_parameters=True)), None),
    'another_wrapper': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN),
        dict(model_wrapper_cfg=dict(type='MMFullyShardedDataParallel')), None),
    'a_wrapper_of_ddp_defaults': (    # mmengine reads the top-level find_unused_parameters only without it
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=FCN), dict(model_wrapper_cfg=dict()),
        _stops('model.decode_head (FCNHead, in_index 3)', 'model.decode_head', 'reads 1 of the maps',
               'stages 0, 1, 2', option='model_wrapper_cfg.find_unused_parameters')),
    'a_mask_head_judged_elsewhere': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=dict(type='Mask2FormerHead', in_channels=[8]),
             auxiliary_head=AUX), {}, None),
    'an_in_index_out_of_range_judged_elsewhere': (
        dict(type='EncoderDecoder', backbone=VSSM4, decode_head=dict(FCN, in_index=4)), {}, None),
    'local_vim_layers': (
        dict(type='EncoderDecoder', backbone=VIM3, decode_head=dict(FCN, in_channels=32, in_index=[1, 2])), {},
        'model.decode_head (FCNHead, in_index [1, 2]) reads 2 of the maps, but model.backbone (MM_LocalVim, '
        'out_indices [0, 1, 2]) gives 3 maps of [32, 32, 32] channels (layers 0, 1, 2): the output norms of layer 0 '
        'get no gradient, and DistributedDataParallel stops on them at the second iteration: give '
        'model.backbone.out_indices only the maps read (and set model.decode_head for them), or set --cfg-options '
        'find_unused_parameters=True'),
}


@pytest.mark.parametrize('model, settings, message', CASES.values(), ids=CASES.keys())
def test_the_line_for_maps_nothing_reads_in_a_distributed_run(model, settings, message):
    from mmengine.config import Config
    cfg = Config(dict(model=copy.deepcopy(model), launcher='pytorch', **settings))
    assert map_fit.unread_maps_problem(cfg) == message
    cfg.launcher = 'none'    # one process, no DDP: the untrained norms stop nothing
    assert map_fit.unread_maps_problem(cfg) is None


def _fcn_segmentor_cfg():
    """The shrunk LocalVMamba-T UperNet config with an FCN head on stage 3 in place of UperNet (the auxiliary head
    reads stage 2): stages 0 and 1 go unread."""
    from mmengine.config import Config
    model = copy.deepcopy(seg_config('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['decode_head'] = dict(type='FCNHead', in_channels=128, in_index=3, channels=16, num_convs=1,
                                num_classes=150, norm_cfg=dict(type='BN'), loss_decode=model['decode_head'][
                                    'loss_decode'])
    model['auxiliary_head'].update(in_channels=64, channels=16, norm_cfg=dict(type='BN'))
    model['data_preprocessor']['size'] = (128, 160)
    return Config(dict(model=model, launcher='pytorch'))


def _ddp_steps(model_cfg: dict, find_unused: bool) -> int:
    """Training steps of the segmentor of ``model_cfg`` wrapped as mmengine wraps it (one gloo process) that run
    before DistributedDataParallel stops (2 when both run)."""
    from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    model.init_weights()
    wrapped = MMDistributedDataParallel(module=model, broadcast_buffers=False, find_unused_parameters=find_unused)
    model.train()
    for step in range(2):
        try:
            losses = wrapped(**model.data_preprocessor(seg_batch(), True), mode='loss')
            model.parse_losses(losses)[0].backward()
        except RuntimeError as err:
            assert 'Expected to have finished reduction in the prior iteration' in str(err)
            return step
    return 2


@pytest.fixture
def one_gloo_process():
    """A gloo process group of this process alone, as a one-process distributed run has."""
    import torch.distributed as dist
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        port = free.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unread_stages_stop_ddp_and_both_ways_out_train(one_gloo_process):
    cfg = _fcn_segmentor_cfg()
    problem = map_fit.unread_maps_problem(cfg)
    assert problem is not None and 'stages 0, 1 get no gradient' in problem
    assert _ddp_steps(cfg.model, find_unused=False) == 1

    found = copy.deepcopy(cfg)
    apply_advice(found, problem)
    assert found.find_unused_parameters is True and map_fit.unread_maps_problem(found) is None
    assert _ddp_steps(found.model, find_unused=True) == 2

    fewer = copy.deepcopy(cfg)
    apply_advice(fewer, 'set --cfg-options model.backbone.out_indices=(2,3) model.decode_head.in_index=1 '
                        'model.auxiliary_head.in_index=0')
    assert map_fit.neck_input_problem(fewer.model) is None and map_fit.unread_maps_problem(fewer) is None
    assert _ddp_steps(fewer.model, find_unused=False) == 2


def test_the_train_tool_stops_before_anything_is_built(tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """A distributed run (dist_train.sh passes --launcher pytorch) of the UperNet config with an FCN head on stage 3."""
    monkeypatch.setattr(launch, '_build_runner', lambda *_: pytest.fail('a runner was built'))
    config = tmp_path / 'fcn.py'
    base = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                        'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    config.write_text(f"_base_ = {base!r}\nmodel = dict(decode_head=dict(_delete_=True, type='FCNHead', "
                      f"in_channels=768, in_index=3, channels=64, num_classes=150))\n")
    with pytest.raises(SystemExit) as exited:
        launch.train_main('segmentation', [str(config), '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'w')])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count('\n') == 1, err
    assert err.startswith('error: model.decode_head (FCNHead, in_index 3) and model.auxiliary_head (FCNHead, '
                          'in_index 2) read 2 of the maps, but model.backbone (MM_LocalVSSM, out_indices (0, 1, 2, 3))'
                          ' gives 4 maps'), err
