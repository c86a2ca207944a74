"""mmengine checkpoints of the det/seg entry points load with weights_only=True: the message hub is saved as tensors
and plain values and restored on load; mmengine's own loads go through the safe loader (a file that needs pickle is
refused naming --trust-checkpoint, without running its code); nothing sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
import argparse
import io
import os

import numpy as np
import pytest
import torch

from conftest import IMAGE_HW, REPO, finish, require, start_seg_tool

require('mmengine')

from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402

from classification.common import UnsafeCheckpointError  # noqa: E402
from classification.dense.mm_checkpoint import PlainCheckpointHook, from_plain, to_plain  # noqa: E402


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _message_hub_state():
    hub = MessageHub.get_instance('test_mm_checkpoint')
    for loss in (1.5, 0.75, 0.5):
        hub.update_scalar('train/loss', loss)
    hub.update_scalar('train/lr', np.float64(0.01))
    hub.update_info('iter', 3)
    hub.update_info('seed', np.int64(7))
    return hub.state_dict()


def _saved_and_loaded(checkpoint: dict) -> dict:
    """``checkpoint`` saved through the hook and loaded back with ``weights_only=True``, as the Runner does."""
    PlainCheckpointHook().before_save_checkpoint(None, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    PlainCheckpointHook().after_load_checkpoint(None, loaded)
    return loaded


def test_the_message_hub_round_trips_through_a_weights_only_file():
    checkpoint = {'meta': {'iter': 3, 'dataset_meta': {'classes': ('a', 'b'), 'palette': [[1, 2, 3]]}},
                  'state_dict': {'w': torch.ones(2)}, 'message_hub': _message_hub_state(),
                  'mask': np.arange(4, dtype=np.int32)}
    loaded = _saved_and_loaded(dict(checkpoint))
    loss = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and loss.mean() == pytest.approx(2.75 / 3) and loss.current() == 0.5
    assert loss.data[1].tolist() == [1, 1, 1]
    assert loaded['message_hub']['log_scalars']['train/lr'].current() == pytest.approx(0.01)
    assert loaded['message_hub']['runtime_info']['seed'] == 7
    assert loaded['meta'] == checkpoint['meta'] and torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert loaded['mask'].dtype == np.int32 and loaded['mask'].tolist() == [0, 1, 2, 3]
    assert from_plain(to_plain([1, (2.0, 'x')])) == [1, (2.0, 'x')]


def test_a_resumed_multistep_schedule_keeps_its_milestones():
    """mmengine's MultiStepLR keeps its milestones in a Counter (every det config uses it): they must come back as
    saved, so that a resumed run still decays its learning rate at them."""
    from collections import Counter, OrderedDict

    from mmengine.optim import MultiStepLR
    param = torch.nn.Parameter(torch.ones(1))
    scheduler = MultiStepLR(torch.optim.SGD([param], lr=1.0), milestones=[2, 3], by_epoch=False)
    loaded = _saved_and_loaded({'param_schedulers': [scheduler.state_dict()], 'hub': OrderedDict(a=np.float64(1.5))})
    assert loaded['param_schedulers'][0]['milestones'] == Counter({2: 1, 3: 1})
    assert loaded['hub'] == OrderedDict(a=1.5) and type(loaded['hub']) is OrderedDict

    optimizer = torch.optim.SGD([param], lr=1.0)
    resumed = MultiStepLR(optimizer, milestones=[2, 3], by_epoch=False)   # as the Runner builds it, then loads
    resumed.load_state_dict(loaded['param_schedulers'][0])
    lrs = []
    for _ in range(3):
        optimizer.step()
        resumed.step()
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs == pytest.approx([1.0, 0.1, 0.01])


def test_a_bounded_history_keeps_its_bound_and_a_strided_array_its_values():
    """A HistoryBuffer built with a max_length (mmengine's default is 1,000,000) still drops its oldest values after a
    resume, and a numpy array that torch cannot share (a negative stride: a reversed view) is saved by value."""
    bounded = HistoryBuffer(max_length=2)
    for loss in (3.0, 2.0, 1.0):
        bounded.update(loss)
    loaded = _saved_and_loaded({'hub': {'loss': bounded}, 'order': np.arange(5)[::-1]})
    loss = loaded['hub']['loss']
    assert loss.max_length == 2 and loss.data[0].tolist() == [2.0, 1.0]
    loss.update(0.5)
    assert loss.data[0].tolist() == [1.0, 0.5]
    assert loaded['order'].tolist() == [4, 3, 2, 1, 0]


def test_what_other_hooks_add_to_a_checkpoint_is_saved_in_the_plain_form_too(tmp_path, monkeypatch):
    """The Runner calls before_save_checkpoint on its hooks by priority; the plain form comes last, so a value another
    hook adds (here a NORMAL hook's numpy scalar and array) reaches the weights_only file as a plain one too."""
    from mmengine.config import Config
    from mmengine.hooks import Hook

    from classification.dense import launch

    class AddsNumpy(Hook):
        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint['extra'] = {'scale': np.float32(0.5), 'mask': np.arange(3)}

    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                                       'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'))
    cfg.merge_from_dict({'model.backbone.pretrained': None})
    cfg.work_dir, cfg.launcher = str(tmp_path / 'work'), 'none'
    runner = launch._build_runner(cfg)
    runner.register_hook(AddsNumpy())
    checkpoint = {'meta': {'iter': 1}}
    runner.call_hook('before_save_checkpoint', checkpoint=checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    runner.call_hook('after_load_checkpoint', checkpoint=loaded)
    assert loaded['extra']['scale'] == 0.5 and loaded['extra']['mask'].tolist() == [0, 1, 2]


def test_mmengine_loads_refuse_pickled_code_unless_trusted(tmp_path):
    from mmengine.runner import CheckpointLoader

    from classification.dense import launch
    marker = str(tmp_path / 'marker')
    crafted = str(tmp_path / 'crafted.pth')
    torch.save({'state_dict': {}, 'payload': _Payload(marker)}, crafted)
    legacy = str(tmp_path / 'legacy.pth')
    torch.save({'state_dict': {'w': torch.ones(1)}, 'message_hub': _message_hub_state()}, legacy)
    schemes = dict(CheckpointLoader._schemes)
    try:
        launch._route_checkpoint_loads(trust=False)
        for path in (crafted, legacy):
            with pytest.raises(UnsafeCheckpointError, match='--trust-checkpoint'):
                CheckpointLoader.load_checkpoint(path)
        assert not os.path.exists(marker)
        launch._route_checkpoint_loads(trust=True)
        assert torch.equal(CheckpointLoader.load_checkpoint(legacy)['state_dict']['w'], torch.ones(1))
    finally:
        CheckpointLoader._schemes = schemes


@pytest.mark.parametrize('local_rank, events', [('0', ['read', 'barrier']), ('1', ['barrier', 'read'])])
def test_mmengine_url_loads_are_downloaded_by_each_nodes_local_rank_0_first(monkeypatch, local_rank, events):
    """mmengine's own load_from_http lets rank 0 download a load_from / --resume URL while the others wait at a
    barrier; the safe loader that replaces it had every process download it at once. It now lets each node's local
    rank 0 read (download) it first, the others reading torch.hub's cache after the barrier."""
    import torch.distributed as dist
    from mmengine.runner import CheckpointLoader

    from classification.dense import launch
    url = 'https://example.com/work_dirs/iter_16000.pth'
    happened = []
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url',
                        lambda path, **kwargs: happened.append('read') or {'state_dict': {'w': torch.ones(1)}})
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: 2)
    monkeypatch.setattr(dist, 'get_rank', lambda group=None: int(local_rank))
    monkeypatch.setattr(dist, 'barrier', lambda *args, **kwargs: happened.append('barrier'))
    monkeypatch.setenv('LOCAL_RANK', local_rank)
    schemes = dict(CheckpointLoader._schemes)
    try:
        launch._route_checkpoint_loads(trust=False)
        loaded = CheckpointLoader._get_checkpoint_loader(url)(url, 'cpu')
    finally:
        CheckpointLoader._schemes = schemes
    assert happened == events
    assert torch.equal(loaded['state_dict']['w'], torch.ones(1))


def test_the_entry_points_leave_torch_defaults_alone(monkeypatch):
    from mmengine.runner import CheckpointLoader

    from classification.dense import launch
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.setenv('LOCAL_RANK', '0')
    schemes = dict(CheckpointLoader._schemes)
    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    args = argparse.Namespace(config=config, launcher='none', cfg_options=None, work_dir=None, local_rank=0,
                              trust_checkpoint=False)
    try:
        launch._load_config(args)
        loader = CheckpointLoader._get_checkpoint_loader('ckpt.pth')
        assert loader.__qualname__ == 'safe_checkpoint_loader.<locals>.load'
    finally:
        CheckpointLoader._schemes = schemes
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ


def test_the_test_tool_refuses_a_crafted_checkpoint_in_one_line(tmp_path):
    require('mmseg')
    from test_mm_tools import TINY_CONFIG, _ade_folder

    from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    config = tmp_path / 'tiny_upernet_local_vssm.py'
    config.write_text(TINY_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=[list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]], root=root, ckpt=None))
    marker = tmp_path / 'marker'
    crafted = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'payload': _Payload(str(marker))}, crafted)
    proc = finish(start_seg_tool('test.py', str(config), str(crafted), '--work-dir', str(tmp_path / 'work')))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {crafted} holds pickled objects')
    assert '--trust-checkpoint' in proc.stderr and 'Traceback' not in proc.stderr and not marker.exists()


def test_the_trust_of_one_command_does_not_pass_to_a_run_of_its_saved_config(tmp_path):
    """--trust-checkpoint went into the backbone's config, which mmengine saves in the work_dir (and in every
    checkpoint's meta): a later run of that saved config unpickled the backbone's file again without being asked."""
    require('mmseg')
    from test_mm_tools import TINY_CONFIG, _ade_folder

    from classification.dense.backbones import MM_LocalVSSM
    from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    directions = [list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]]
    marker, flexible_marker = tmp_path / 'marker', tmp_path / 'flexible_marker'
    pretrained, flexible_pretrained = tmp_path / 'pretrained.pth', tmp_path / 'flexible_pretrained.pth'
    weights = MM_LocalVSSM(dims=16, depths=(1, 1, 1, 1), directions=directions).state_dict()
    torch.save({'model': weights, 'payload': _Payload(str(marker))}, pretrained)
    torch.save({'model': weights, 'payload': _Payload(str(flexible_marker))}, flexible_pretrained)
    config = tmp_path / 'tiny_upernet_local_vssm.py'
    config.write_text(TINY_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=directions, root=root, ckpt=str(pretrained)))

    def start(config_file, work_dir, *flags):   # two runs at a time, each with its own payload's marker
        return start_seg_tool('train.py', str(config_file), '--work-dir', str(work_dir), *flags)

    trusted = start(config, tmp_path / 'trusted', '--trust-checkpoint')
    # a FlexibleRunner builds the model in train(): from its own copy of the model's config, given the trust there
    flexible = start(config, tmp_path / 'flexible', '--trust-checkpoint', '--cfg-options', 'runner_type=FlexibleRunner',
                     f'model.backbone.pretrained={flexible_pretrained}')
    trusted = finish(trusted)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.exists() and 'MM_LocalVSSM: loaded' in trusted.stdout + trusted.stderr
    saved = tmp_path / 'trusted' / config.name
    assert 'trust_checkpoint' not in saved.read_text()
    assert 'trust_checkpoint' not in torch.load(tmp_path / 'trusted' / 'iter_2.pth', weights_only=True)['meta']['cfg']
    marker.unlink()
    again = finish(start(saved, tmp_path / 'again'))
    assert again.returncode == 2, again.stderr[-3000:]
    assert again.stderr.strip().splitlines()[-1].startswith(f'error: {pretrained} holds pickled objects')
    assert 'Traceback' not in again.stderr and not marker.exists()
    flexible = finish(flexible)
    assert flexible.returncode == 0, flexible.stderr[-3000:]
    assert flexible_marker.exists() and 'MM_LocalVSSM: loaded' in flexible.stdout + flexible.stderr
    assert 'trust_checkpoint' not in (tmp_path / 'flexible' / config.name).read_text()
