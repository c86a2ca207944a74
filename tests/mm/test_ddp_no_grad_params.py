"""DistributedDataParallel's stop on trained parameters that got no gradient (find_unused_parameters=False, as mmengine
builds it) told in one line that names them: DDP's index order checked against its own names (debug mode), a neck's
convolutions that nothing reads (which the map check before the build does not see) in a real one-process gloo run,
other errors left alone, and the train tool's exit end to end."""
import copy
import os
import socket

import pytest
import torch

from conftest import IMAGE_HW, REPO, apply_advice, require, seg_batch, seg_config, tiny_vssm_backbone

from classification.dense import launch, map_fit
from classification.dense.ddp_no_grad import (NoGradParametersError, ddp_parameter_names, group_names,
                                              no_grad_parameters_problem)
from classification.dense.map_fit import find_unused_option

require('mmseg')

import torch.distributed as dist  # noqa: E402

# A 5-level FPN (its fifth level from the last input map) before an FCN head on level 0 and an auxiliary head on
# level 1: every backbone map reaches level 0 through the FPN's top-down path, but the neck's output convolutions of
# levels 2 and 3 and its extra one get no gradient.
FPN_NECK = dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=16, num_outs=5, add_extra_convs='on_input')
FCN_ON_LEVEL_0 = dict(type='FCNHead', in_channels=16, in_index=0, channels=16, num_convs=1, num_classes=150,
                      norm_cfg=dict(type='BN'))
AUX_ON_LEVEL_1 = dict(in_channels=16, in_index=1, channels=16, norm_cfg=dict(type='BN'))
NECK_LINE = ('DistributedDataParallel stopped: 6 trained parameters got no gradient in the previous iteration on '
             'rank 0: neck.fpn_convs.{2,3,4} (conv.weight, conv.bias); change the config so that those modules are '
             'used or not built, or set --cfg-options find_unused_parameters=True')
# The start of DDP's message for find_unused_parameters=False, as its reducer writes it.
STOP_TEXT = ('Expected to have finished reduction in the prior iteration before starting a new one. This error '
             'indicates that your module has parameters that were not used in producing loss. You can enable unused '
             'parameter detection by passing the keyword argument `find_unused_parameters=True` to '
             '`torch.nn.parallel.DistributedDataParallel`, and by \nmaking sure all `forward` function outputs '
             'participate in calculating loss.')


class Tricky(torch.nn.Module):
    """A root parameter registered after the submodules, a submodule shared under a second name, a frozen one, one
    DDP is told to ignore, and one nothing uses: the cases where DDP's index order could part from a plain walk."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(2, 2)
        self.unused = torch.nn.Linear(2, 2)
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)
        self.ignored = torch.nn.Linear(2, 2)
        self.last = torch.nn.Linear(2, 2, bias=False)
        self.first_again = self.first
        self._ddp_params_and_buffers_to_ignore = ['ignored.weight', 'ignored.bias']

    def forward(self, x):
        return self.last(self.frozen(self.first(x))).sum()


@pytest.fixture
def one_gloo_process():
    """A gloo process group of this process alone, as a one-process distributed run (dist_train.sh 1) has; DDP's
    debug level put back afterwards."""
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        port = free.getsockname()[1]
    level = dist.get_debug_level()
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    yield
    dist.set_debug_level(level)
    dist.destroy_process_group()


def _ddp_stop(make_ddp, step) -> RuntimeError:
    """The error DDP ``make_ddp()`` stops with in the second of two training steps ``step(ddp)``."""
    wrapped = make_ddp()
    step(wrapped)
    with pytest.raises(RuntimeError, match='Expected to have finished reduction in the prior iteration') as stop:
        step(wrapped)
    return wrapped, stop.value


@pytest.mark.parametrize('level', ['OFF', 'DETAIL'])
def test_ddp_index_order_is_the_order_of_the_names(one_gloo_process, level):
    """Without debug mode DDP gives indices; with it (TORCH_DISTRIBUTED_DEBUG=DETAIL) names too, unordered and the
    root module's with a leading dot: both read as the same names, those DDP's DETAIL mode gives. The level is set
    once the group started: TORCH_DISTRIBUTED_DEBUG=DETAIL before wraps gloo in a checking group, on which torch 2.14
    crashes (segmentation fault) building DDP; INFO gives the names too."""
    dist.set_debug_level(getattr(dist.DebugLevel, level))
    torch.manual_seed(0)
    wrapped, stop = _ddp_stop(lambda: torch.nn.parallel.DistributedDataParallel(Tricky()),
                              lambda ddp: ddp(torch.randn(3, 2)).backward())
    assert ddp_parameter_names(wrapped) == ['scale', 'first.weight', 'first.bias', 'unused.weight', 'unused.bias',
                                            'last.weight']
    assert ('Parameters which did not receive grad for rank 0: ' in str(stop)) == (level == 'DETAIL')
    if level == 'DETAIL':
        named = str(stop).split('Parameters which did not receive grad for rank 0: ')[1].splitlines()[0]
        assert sorted(named.split(', ')) == ['.scale', 'unused.bias', 'unused.weight']
    assert no_grad_parameters_problem(str(stop), wrapped) == (
        'DistributedDataParallel stopped: 3 trained parameters got no gradient in the previous iteration on rank 0: '
        'scale, unused (weight, bias); change the config so that those modules are used or not built, or set '
        '--cfg-options find_unused_parameters=True')


def _fpn_segmentor() -> dict:
    """The shrunk LocalVMamba-T UperNet config's model with :data:`FPN_NECK` and the heads on its levels 0 and 1."""
    model = copy.deepcopy(seg_config('upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py').model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['neck'] = FPN_NECK
    model['decode_head'] = dict(FCN_ON_LEVEL_0, loss_decode=model['decode_head']['loss_decode'])
    model['auxiliary_head'].update(AUX_ON_LEVEL_1)
    model['data_preprocessor']['size'] = IMAGE_HW
    return model


def _segmentor_ddp(model_cfg: dict, find_unused: bool):
    """The segmentor of ``model_cfg`` wrapped as mmengine wraps it on a CPU (one gloo process)."""
    from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    model.init_weights()
    model.train()
    return MMDistributedDataParallel(module=model, broadcast_buffers=False, find_unused_parameters=find_unused)


def _segmentor_step(wrapped) -> None:
    model = wrapped.module
    losses = wrapped(**model.data_preprocessor(seg_batch(), True), mode='loss')
    model.parse_losses(losses)[0].backward()


@pytest.mark.parametrize('level', ['OFF', 'DETAIL'])
def test_a_necks_convolutions_that_nothing_reads_are_named(one_gloo_process, level):
    from mmengine.config import Config
    cfg = Config(dict(model=_fpn_segmentor(), launcher='pytorch'))
    assert map_fit.unread_maps_problem(cfg) is None     # every backbone map is read: the check before the build passes
    dist.set_debug_level(getattr(dist.DebugLevel, level))
    wrapped, stop = _ddp_stop(lambda: _segmentor_ddp(cfg.model, find_unused=False), _segmentor_step)
    assert no_grad_parameters_problem(str(stop), wrapped, find_unused_option(cfg)) == NECK_LINE

    apply_advice(cfg, NECK_LINE)    # the way out the line gives trains
    assert cfg.find_unused_parameters is True
    wrapped = _segmentor_ddp(cfg.model, find_unused=cfg.find_unused_parameters)
    for _ in range(2):
        _segmentor_step(wrapped)


def test_the_names_are_grouped_by_the_modules_that_got_no_gradient():
    """Hand-listed names: a module all of whose parameters got none is named once, numbered siblings together, a
    module that still trains some keeps its own names; past four groups the rest is counted."""
    trainable = ['neck.fpn_convs.0.conv.weight', 'neck.fpn_convs.1.conv.weight', 'neck.fpn_convs.1.conv.bias',
                 'neck.fpn_convs.2.conv.weight', 'neck.fpn_convs.2.conv.bias', 'neck.fpn_convs.3.conv.weight',
                 'neck.fpn_convs.3.conv.bias', 'head.cls.weight', 'head.cls.bias', 'head.reg.weight', 'pos',
                 'aux.a.weight', 'aux.b.weight', 'aux.c.weight', 'aux.d.weight', 'aux.e.weight']
    unused = ['neck.fpn_convs.1.conv.weight', 'neck.fpn_convs.1.conv.bias', 'neck.fpn_convs.2.conv.weight',
              'neck.fpn_convs.2.conv.bias', 'head.cls.bias', 'pos', 'aux.a.weight', 'aux.b.weight', 'aux.c.weight',
              'aux.d.weight', 'aux.e.weight']
    assert group_names(unused, trainable) == [('neck.fpn_convs.{1,2} (conv.weight, conv.bias)', 4),
                                              ('head.cls (bias)', 1), ('pos', 1), ('aux (5 parameters)', 5)]

    class Flat(torch.nn.Module):
        def __init__(self, count: int):
            super().__init__()
            for i in range(count):
                self.register_parameter(f'p{i}', torch.nn.Parameter(torch.zeros(1)))
            self.used = torch.nn.Linear(1, 1)

    text = (f'{STOP_TEXT}\nParameter indices which did not receive grad for rank 1: 0 1 2 3 4 5\n In '
            f'addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG')
    assert no_grad_parameters_problem(text, Flat(6), 'model_wrapper_cfg.find_unused_parameters') == (
        'DistributedDataParallel stopped: 6 trained parameters got no gradient in the previous iteration on rank 1: '
        'p0, p1, p2, p3 and 2 more parameters; change the config so that those modules are used or not built, or set '
        '--cfg-options model_wrapper_cfg.find_unused_parameters=True')


def test_the_wrapper_option_is_advised_where_the_config_sets_a_wrapper():
    from mmengine.config import Config
    assert find_unused_option(Config(dict(model=dict()))) == 'find_unused_parameters'
    assert find_unused_option(Config(dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel')))) == (
        'model_wrapper_cfg.find_unused_parameters')


@pytest.mark.parametrize('error', [
    RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB'),
    RuntimeError('Expected to have finished reduction in the prior iteration before starting a new one. Since '
                 '`find_unused_parameters=True` is enabled, this likely  means that not all `forward` outputs '
                 'participate in computing loss.\nParameter indices which did not receive grad for rank 0: 0'),
    RuntimeError(f'{STOP_TEXT}\nParameter indices which did not receive grad for rank 0: 7'),
], ids=['another_error', 'ddp_finding_unused_parameters', 'an_index_past_the_parameters'])
def test_other_runtime_errors_go_through_untouched(error):
    """Through run_step, as the train tool runs it: the same error object, not a line (a DDP stop with
    find_unused_parameters set has another cause; an index past the model's parameters cannot be named)."""
    class Runner:
        model = torch.nn.Linear(2, 2)
        cfg = None

        def train(self):
            raise error

    with pytest.raises(RuntimeError) as raised:
        launch.run_step(lambda: launch._train(Runner()))
    assert raised.value is error and not isinstance(raised.value, NoGradParametersError)


FPN_CONFIG = """
_base_ = {base!r}
model = dict(
    data_preprocessor=dict(size={hw!r}),
    backbone=dict(dims=16, depths=(1, 1, 1, 1), directions={directions!r}, pretrained=None),
    neck={neck!r},
    decode_head=dict(_delete_=True, **{head!r}),
    auxiliary_head={aux!r})
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')]))
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
train_cfg = dict(max_iters=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=100))
"""


def test_the_train_tool_ends_in_the_line(tmp_path, one_gloo_process, monkeypatch, capsys):
    """segmentation/tools/train.py's code with --launcher pytorch (what dist_train.sh passes) on two images: the
    second iteration stops, and the tool ends with the line, exit status 2."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    for variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):     # which mmengine's Runner sets: put back afterwards
        monkeypatch.setenv(variable, os.environ.get(variable, '1'))
    from mmengine.runner import CheckpointLoader
    from test_mm_tools import _ade_folder

    from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    config = tmp_path / 'fpn_fcn.py'
    config.write_text(FPN_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=[list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]], neck=FPN_NECK,
        head=FCN_ON_LEVEL_0, aux=AUX_ON_LEVEL_1, root=root))
    schemes = dict(CheckpointLoader._schemes)
    try:
        with pytest.raises(SystemExit) as exited:
            launch.train_main('segmentation', [str(config), '--launcher', 'pytorch', '--work-dir',
                                               str(tmp_path / 'work')])
    finally:
        CheckpointLoader._schemes = schemes
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.splitlines()[-1] == f'error: {NECK_LINE}' and 'Traceback' not in err, err[-3000:]
