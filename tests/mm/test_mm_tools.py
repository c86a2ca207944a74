"""segmentation/tools/train.py and test.py end to end on a tiny ADE20K-format folder: two iterations of a shrunk
LocalVMamba UperNet (initialised from a tools/train.py classification checkpoint), then evaluation of the saved
mmengine checkpoint (saved in a form that loads with weights_only=True); a second fresh run into that work_dir is
refused, and --overwrite deletes the earlier run's checkpoints only, once the new run has started."""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGE_HW, REPO, finish, require, start_seg_tool

require('mmseg')

import torch  # noqa: E402

from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS, save_directions  # noqa: E402

TINY_CONFIG = """
_base_ = {base!r}
model = dict(
    data_preprocessor=dict(size={hw!r}),
    backbone=dict(dims=16, depths=(1, 1, 1, 1), directions={directions!r}, pretrained={ckpt!r}),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
    auxiliary_head=dict(in_channels=64, channels=16))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')]))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
"""


def _ade_folder(root: str) -> None:
    rng = np.random.default_rng(0)
    for split, count in (('training', 2), ('validation', 1)):
        os.makedirs(os.path.join(root, 'images', split))
        os.makedirs(os.path.join(root, 'annotations', split))
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)).save(
                os.path.join(root, 'images', split, f'{i}.jpg'))
            Image.fromarray(rng.integers(0, 151, IMAGE_HW, dtype=np.uint8)).save(
                os.path.join(root, 'annotations', split, f'{i}.png'))


def _output(proc: subprocess.Popen, status: int = 0) -> str:
    """stdout and stderr of the finished ``proc``, once its exit status is checked."""
    done = finish(proc)
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _run(script: str, *args: str, status: int = 0) -> str:
    return _output(start_seg_tool(script, *args), status)


def test_train_then_test_a_segmentor(tmp_path, classification_checkpoints, monkeypatch, capsys):
    root, work = str(tmp_path / 'ade'), str(tmp_path / 'work')
    _ade_folder(root)
    config = tmp_path / 'tiny_upernet_local_vssm.py'
    directions = [list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]]
    config.write_text(TINY_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=directions, root=root,
        ckpt=classification_checkpoints['local_vssm_tiny']))

    log = _run('train.py', str(config), '--work-dir', work)
    assert 'MM_LocalVSSM: loaded' in log and 'Iter(train) [2/2]' in log and 'mIoU' in log
    checkpoint = os.path.join(work, 'iter_2.pth')
    assert os.path.isfile(checkpoint)
    # a second fresh run there: refused before anything is built, by the code train.py runs (here in-process)
    from mmengine.runner import CheckpointLoader

    from classification.dense import launch
    monkeypatch.setenv('LOCAL_RANK', '0')
    schemes = dict(CheckpointLoader._schemes)
    try:
        with pytest.raises(SystemExit) as exit_info:
            launch.train_main('segmentation', [str(config), '--work-dir', work])
    finally:
        CheckpointLoader._schemes = schemes
    again = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert again.strip().splitlines()[-1] == (
        f'error: {work} already holds a run (iter_2.pth, last_checkpoint); continue it with --resume, start afresh '
        f'there with --overwrite (deletes its checkpoints), or choose another --work-dir')
    saved_config = os.path.join(work, config.name)     # the training's resolved config, beside its checkpoints
    with open(saved_config, encoding='utf-8') as f:
        trained = f.read()
    vim = classification_checkpoints['local_vim_tiny']     # another family's weights: the backbone refuses them
    # the refusals run beside each other: the --overwrite one in the trained run's work_dir (whose checkpoint and config
    # it must leave), the test.py one (other directions) in a work_dir of its own
    refusing = start_seg_tool('train.py', str(config), '--work-dir', work, '--overwrite', '--cfg-options',
                              f'model.backbone.pretrained={vim}')
    # the checkpoint records its backbone's directions: a config with others is refused, the checkpoint gives them
    assert torch.load(checkpoint, weights_only=True)['directions'] == directions
    swapped = [directions[1], directions[0], *directions[2:]]
    assert swapped != directions
    save_directions(tmp_path / 'swapped.yaml', swapped)
    other = ['--cfg-options', f'model.backbone.directions={tmp_path / "swapped.yaml"}']
    refused_directions = start_seg_tool('test.py', str(config), checkpoint, '--work-dir', str(tmp_path / 'swapped'),
                                        *other)
    refused = _output(refusing, status=2)
    assert 'a checkpoint of another model family?' in refused.strip().splitlines()[-1]
    assert "--overwrite: deleted" not in refused and os.path.isfile(checkpoint)   # the run it would replace stays
    with open(saved_config, encoding='utf-8') as f:    # and its config, not the one of the run that did not start
        assert f.read() == trained
    refused = _output(refused_directions, status=2)
    assert refused.strip().splitlines()[-1] == (
        f"error: {checkpoint} was trained with other scan directions than this config's backbone (layer 0: "
        f"{directions[0]} vs {directions[1]} here): give the backbone its run's directions, e.g. --cfg-options "
        f"model.backbone.directions={checkpoint} (the checkpoint holds them)")

    # the test run takes the backbone's directions from the checkpoint, as that message advises
    out = str(tmp_path / 'preds')
    shown = str(tmp_path / 'shown')
    log = _run('test.py', str(config), checkpoint, '--out', out, '--work-dir', work, '--show-dir', shown,
               '--cfg-options', f'model.backbone.directions={checkpoint}')
    assert 'mIoU' in log
    assert os.listdir(out) == ['0.png']
    # every image drawn (mmseg's hook draws every 50th: of a small test set none)
    assert os.listdir(os.path.join(shown, 'vis_data', 'vis_image')) == ['test_0.jpg_0.png']
    assert Image.open(os.path.join(out, '0.png')).size == IMAGE_HW[::-1]
    # the test run saves its own config beside its log folder; the training run's stays as it was
    with open(saved_config, encoding='utf-8') as f:
        assert f.read() == trained
    tested = [name for name in os.listdir(work) if name.endswith('.py') and name != config.name]
    assert len(tested) == 1 and os.path.isdir(os.path.join(work, tested[0][:-3]))
    with open(os.path.join(work, tested[0]), encoding='utf-8') as f:
        assert f"load_from = '{checkpoint}'" in f.read()


def test_a_fresh_run_claims_its_work_dir(tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """Refused without --resume / --overwrite; --overwrite deletes the CheckpointHook's files and last_checkpoint on
    the main rank only, once the run has started, and leaves the logs' folders and any other file."""
    from classification.dense import launch
    from classification.dense.mm_checkpoint import EarlierRunDeletion

    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    work = tmp_path / 'work'
    (work / '20261202_010203').mkdir(parents=True)
    earlier = ['best_mIoU_iter_4.pth', 'epoch_1.pth', 'iter_4.pth', 'last_checkpoint']
    for name in earlier + ['backbone.pth']:
        (work / name).write_text('x')
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    started = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, fit_source=None, overwritten=(), *_: SimpleNamespace(
        train=lambda: started.append((cfg, overwritten))))
    argv = [config, '--work-dir', str(work)]
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', argv)
    assert exit_info.value.code == 2 and not started
    launch.train_main('segmentation', argv + ['--resume'])
    assert started[-1][0].resume and started[-1][1] == []
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', argv + ['--resume', '--overwrite'])
    assert exit_info.value.code == 2 and len(started) == 1
    launch.train_main('segmentation', argv + ['--overwrite'])
    assert not started[-1][0].resume and started[-1][1] == sorted(earlier)
    assert len(os.listdir(work)) == 6     # deleted only once the run has started: by the hook, at before_train
    deletion = EarlierRunDeletion(str(work), started[-1][1])
    dumped = []
    deletion.before_train(SimpleNamespace(rank=1, dump_config=lambda: dumped.append(1)))
    assert len(os.listdir(work)) == 6 and not dumped
    deletion.before_train(SimpleNamespace(rank=0, dump_config=lambda: dumped.append(0)))
    assert sorted(os.listdir(work)) == ['20261202_010203', 'backbone.pth'] and dumped == [0]   # its config replaces
    assert capsys.readouterr().err.endswith(f"--overwrite: deleted the earlier run's checkpoints {sorted(earlier)} "
                                            f"in {work}\n")


def test_resuming_another_runs_checkpoint_into_a_work_dir_that_holds_a_run_is_refused(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """mmengine wrote the resumed run's checkpoints over the other run's, file by file (iter_11.pth replaced, and
    last_checkpoint pointing at it); resuming into the checkpoint's own folder, or into a new one, goes on. --amp on
    a machine without CUDA is one line, not mmengine's AssertionError."""
    from classification.dense import launch

    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    run, other = tmp_path / 'run', tmp_path / 'other'
    for folder, names in ((run, ['iter_11.pth', 'last_checkpoint']), (other, ['iter_10.pth'])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text('x')
    started = []
    monkeypatch.setattr(launch, 'missing_checkpoint', lambda path, flag: None)
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, fit_source=None, overwritten=(), *_: SimpleNamespace(
        train=lambda: started.append(cfg.work_dir)))
    resume = ['--resume', str(other / 'iter_10.pth')]
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [config, '--work-dir', str(run), *resume])
    assert exit_info.value.code == 2 and not started
    assert capsys.readouterr().err.endswith(
        f"error: --resume {other / 'iter_10.pth'} continues a run of another folder than {run}, which holds a run "
        f"(iter_11.pth, last_checkpoint) its checkpoints would overwrite: give --work-dir {other} to continue it in "
        f"its own folder, or a --work-dir of its own\n")
    launch.train_main('segmentation', [config, '--work-dir', str(other), *resume])
    launch.train_main('segmentation', [config, '--work-dir', str(tmp_path / 'new'), *resume])
    launch.train_main('segmentation', [config, '--work-dir', str(tmp_path / 'empty'), '--resume'])
    assert started == [str(other), str(tmp_path / 'new'), str(tmp_path / 'empty')]
    assert capsys.readouterr().err.endswith(f"--resume: {tmp_path / 'empty'} holds no checkpoint (no last_checkpoint): "
                                            f"the run starts afresh\n")
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [config, '--work-dir', str(tmp_path / 'amp'), '--amp'])
    assert exit_info.value.code == 2 and capsys.readouterr().err.endswith(
        "error: --amp needs CUDA (mmengine's AmpOptimWrapper trains on GPUs); this machine has none\n")


def test_the_cpu_substitutions_stay_out_of_the_saved_config(tmp_path):
    """Without CUDA the Runner trains with OptimWrapper, BatchNorm and CPU DDP; the work_dir's copy of the config,
    the checkpoints' and the visualizer's vis_data/config.py held them too, so a GPU run of a copy (or a --resume
    there) went on without AMP and SyncBN."""
    from classification.dense.backbones import MM_LocalVSSM
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    directions = [list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]]
    pretrained = tmp_path / 'pretrained.pth'
    torch.save({'model': MM_LocalVSSM(dims=16, depths=(1, 1, 1, 1), directions=directions).state_dict()}, pretrained)
    config = tmp_path / 'tiny_upernet_local_vssm_small.py'     # AmpOptimWrapper and SyncBN
    config.write_text(TINY_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=directions, root=root, ckpt=str(pretrained)))
    work = tmp_path / 'work'
    code = f"""
import argparse, sys
import torch
from classification.dense import launch
args = argparse.Namespace(config={str(config)!r}, launcher='pytorch', cfg_options=None, work_dir={str(work)!r},
                          local_rank=0, trust_checkpoint=False)
cfg = launch._load_config(args)
runner = launch._build_runner(cfg)
bn = {{type(m).__name__ for m in runner.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}}
print(type(runner.model).__name__, runner.optim_wrapper['type'], sorted(bn))
runner.train()
"""
    env = dict(os.environ, RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT='29517',
               CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MMDistributedDataParallel OptimWrapper ['BatchNorm2d']" in proc.stdout
    assert 'no CUDA: AmpOptimWrapper replaced by OptimWrapper' in proc.stdout + proc.stderr
    from mmengine.config import Config
    saved = Config.fromfile(work / config.name)
    meta = Config.fromstring(torch.load(work / 'iter_2.pth', weights_only=True)['meta']['cfg'], '.py')
    (visualized,) = work.glob('*/vis_data/config.py')    # the visualizer's record of the run
    for kept in (saved, meta, Config.fromfile(visualized)):
        assert kept.optim_wrapper.type == 'AmpOptimWrapper' and 'model_wrapper_cfg' not in kept
        assert kept.model.decode_head.norm_cfg.type == kept.model.auxiliary_head.norm_cfg.type == 'SyncBN'


def test_resume_without_last_checkpoint_into_a_folder_of_checkpoints_is_refused(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """Checkpoints copied without mmengine's last_checkpoint pointer: --resume said the work_dir 'holds no checkpoint'
    and started afresh there, to write its own iter_16000.pth over the one copied."""
    from classification.dense import launch

    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    work = tmp_path / 'copied'
    work.mkdir()
    (work / 'iter_16000.pth').write_text('x')
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [config, '--work-dir', str(work), '--resume'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'error: --resume: {work} holds checkpoints (iter_16000.pth) but no last_checkpoint, which names the one to '
        f'continue from: give it, --resume {work}/CHECKPOINT')


def test_resume_continues_the_work_dirs_own_checkpoint_after_the_folder_moved(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """mmengine's last_checkpoint holds an absolute path: --resume in a moved work_dir stopped on 'checkpoint not
    found' of the old place, and in a copied one resumed the original folder's file. The work_dir's own file of that
    name is resumed; a pointer to a file of another folder (CheckpointHook's out_dir) is still followed."""
    from classification.dense import launch

    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    resumed = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        train=lambda: resumed.append(cfg.load_from)))
    runs = tmp_path / 'runs'
    original, elsewhere = runs / 'original', runs / 'out_dir'
    for folder in (original, elsewhere):
        folder.mkdir(parents=True)
        (folder / 'iter_8.pth').write_text('x')
    for name, pointer, checkpoints in (('moved', runs / 'gone' / 'iter_8.pth', ['iter_8.pth']),
                                       ('copied', original / 'iter_8.pth', ['iter_4.pth', 'iter_8.pth']),
                                       ('saved_elsewhere', elsewhere / 'iter_8.pth', []),
                                       ('saved_remotely', 's3://bucket/run/iter_8.pth', [])):
        work = runs / name
        work.mkdir()
        (work / 'last_checkpoint').write_text(str(pointer))
        for checkpoint in checkpoints:
            (work / checkpoint).write_text('x')
        launch.train_main('segmentation', [config, '--work-dir', str(work), '--resume'])
    assert resumed == [str(runs / 'moved' / 'iter_8.pth'), str(runs / 'copied' / 'iter_8.pth'), None, None]
    lost = runs / 'lost'
    lost.mkdir()
    (lost / 'last_checkpoint').write_text(str(runs / 'gone' / 'iter_8.pth'))
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [config, '--work-dir', str(lost), '--resume'])
    assert exit_info.value.code == 2 and len(resumed) == 4
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --resume: {lost / 'last_checkpoint'} names {runs / 'gone' / 'iter_8.pth'}, which does not exist "
        f"(nor does {lost / 'iter_8.pth'}): give the checkpoint to continue from, --resume {lost}/CHECKPOINT")


def test_the_saved_config_of_a_resumed_run_starts_no_resume_of_its_own(tmp_path, monkeypatch):
    """mmengine saved --resume's resume=True and load_from in the work_dir's copy of the config (and in every
    checkpoint): train.py of that copy, without --resume, resumed from the checkpoint the earlier run had started
    from and wrote over the later ones. The copy keeps the run as asked (and the backbone's pretrained file, which a
    resumed run does not read); the run itself resumes."""
    from mmengine.config import Config

    from classification.dense import launch
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    pretrained = tmp_path / 'pretrained.pth'
    pretrained.write_bytes(b'')
    config = tmp_path / 'tiny_upernet_local_vssm.py'
    config.write_text(TINY_CONFIG.format(
        base=os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py'),
        hw=IMAGE_HW, directions=[list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]], root=root, ckpt=str(pretrained)))
    checkpoint = tmp_path / 'run' / 'iter_2.pth'
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b'')
    build = launch._build_runner
    runners = []
    monkeypatch.setattr(launch, '_build_runner', lambda *args: SimpleNamespace(
        train=lambda: runners.append(build(*args))))
    work = tmp_path / 'work'
    launch.train_main('segmentation', [str(config), '--work-dir', str(work), '--resume', str(checkpoint)])
    (runner,) = runners
    assert (runner._resume, runner._load_from) == (True, str(checkpoint))
    saved = Config.fromfile(work / config.name)
    for kept in (saved, runner.cfg):    # the work_dir's copy, and what every checkpoint holds
        assert (kept.resume, kept.load_from, kept.model.backbone.pretrained) == (False, None, str(pretrained))
