"""What a researcher fine-tuning the det/seg backbones meets when an input is wrong: pretrained weights of another
model, a tested or resumed checkpoint that does not fit, --trust-checkpoint, a --cfg-options item without '=' or with
a misspelt key, a work_dir that cannot be written, Ctrl-C. Each ends in one line, never in a traceback."""
import argparse
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import (IMAGE_HW, REPO, det_config, finish, require, start_seg_tool, tiny_vim_backbone,
                      tiny_vssm_backbone)

require('mmseg')

from classification.common import CheckpointError  # noqa: E402
from classification.dense import MM_LocalVim, MM_LocalVSSM, launch, run_inputs  # noqa: E402
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS  # noqa: E402
from classification.models.local_vim import VisionMamba  # noqa: E402

SEG_CONFIG = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
DET_CONFIG = os.path.join(REPO, 'detection', 'configs', 'local_mamba', 'mask_rcnn_local_vssm_tiny_fpn_coco.py')


def _backbone_args(kind: str) -> dict:
    """Keyword arguments of a tiny backbone from the detection configs (without its 'type')."""
    if kind == 'vim':
        cfg = det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py').model.backbone
        args = tiny_vim_backbone(cfg, depth=2, out_indices=[1])
    else:
        args = tiny_vssm_backbone(det_config('mask_rcnn_local_vssm_tiny_fpn_coco.py').model.backbone)
    args.pop('type')
    return args


def _run_tool(script: str, *args: str, cwd: str = None) -> subprocess.CompletedProcess:
    return finish(start_seg_tool(script, *args, cwd=cwd), timeout=300)


def test_pretrained_weights_of_another_model_are_refused_in_one_line(tmp_path):
    vssm_file = tmp_path / 'vssm.pth'
    torch.save({'model': MM_LocalVSSM(**_backbone_args('vssm')).state_dict()}, vssm_file)
    with pytest.raises(CheckpointError) as family:
        MM_LocalVim(**dict(_backbone_args('vim'), pretrained=str(vssm_file))).init_weights()
    assert str(family.value) == (f'{vssm_file}: none of its 97 tensors (patch_embed.0.weight, patch_embed.0.bias, '
                                 f'patch_embed.2.weight, ...) belongs to MM_LocalVim: a checkpoint of another model '
                                 f'family?')

    vim_args = _backbone_args('vim')
    coarse = VisionMamba(**{k: vim_args[k] for k in ('embed_dim', 'depth', 'directions')}, patch_size=8)
    coarse_file = tmp_path / 'patch8.pth'
    torch.save({'state_dict': coarse.state_dict()}, coarse_file)
    with pytest.raises(CheckpointError) as shapes:
        MM_LocalVim(**dict(vim_args, pretrained=str(coarse_file))).init_weights()
    assert str(shapes.value) == (
        f"{coarse_file}: 1 tensors do not fit MM_LocalVim's shapes (patch_embed.proj.weight: checkpoint "
        f"(32, 3, 8, 8), backbone (32, 3, 16, 16)); build the backbone as the checkpoint's model was built "
        f"(patch_size, embed_dim, depth, dims, ...)")

    missing = tmp_path / 'nope.pth'
    with pytest.raises(CheckpointError) as absent:
        MM_LocalVSSM(**dict(_backbone_args('vssm'), pretrained=str(missing))).init_weights()
    assert str(absent.value) == (f"MM_LocalVSSM: pretrained checkpoint not found: {missing} (set the backbone's "
                                 f"pretrained to your file, or to None to start from random weights)")
    with pytest.raises(CheckpointError) as absent:
        MM_LocalVim(**dict(_backbone_args('vim'), pretrained_ckpt=str(missing))).init_weights()
    assert str(absent.value) == (f"MM_LocalVim: pretrained checkpoint not found: {missing} (set the backbone's "
                                 f"pretrained_ckpt to your file, or to None to start from random weights)")
    with pytest.raises(ValueError) as both:
        MM_LocalVSSM(**dict(_backbone_args('vssm'), pretrained=str(missing), pretrained_ckpt='other.pth'))
    assert str(both.value) == (f"MM_LocalVSSM: pass one of pretrained='{missing}' and pretrained_ckpt='other.pth' "
                               f"(set the other to None)")


def test_pretrained_weights_with_another_class_token_layout_are_refused_in_one_line(tmp_path):
    """local_vim_tiny_middle_cls_token weights (a class token in the middle, no RoPE) for the configs' backbone, and
    the other way round: the position table was taken for a non-square grid and resizing it ended in a ValueError
    traceback whose advice (another img_size) did not help. Built as the checkpoint's model, the backbone loads it."""
    args = _backbone_args('vim')
    layout = {k: args[k] for k in ('embed_dim', 'depth', 'directions', 'img_size')}
    cls_args = dict(if_cls_token=True, use_middle_cls_token=True, if_rope=False)
    cls_file, plain_file = tmp_path / 'cls.pth', tmp_path / 'plain.pth'
    cls_model = VisionMamba(**layout, **cls_args)
    torch.save({'model': cls_model.state_dict()}, cls_file)
    torch.save({'model': VisionMamba(**layout).state_dict()}, plain_file)
    with pytest.raises(CheckpointError) as with_token:
        MM_LocalVim(**dict(args, pretrained=str(cls_file))).init_weights()
    assert str(with_token.value) == (
        f'{cls_file}: its model has a middle class token (cls_token) and MM_LocalVim has none: build the backbone '
        f'as the checkpoint\'s model was built (if_cls_token=True, use_middle_cls_token=True, if_rope=False)')
    with pytest.raises(CheckpointError) as without_token:
        MM_LocalVim(**dict(args, **cls_args, pretrained=str(plain_file))).init_weights()
    assert str(without_token.value) == (
        f'{plain_file}: its model has no class token and MM_LocalVim has one: build the backbone as the '
        f'checkpoint\'s model was built (if_cls_token=False)')

    backbone = MM_LocalVim(**dict(args, **cls_args, pretrained=str(cls_file)))
    backbone.init_weights()
    assert sorted(backbone.load_result.missing_keys) == ['layers.0.norm.bias', 'layers.1.norm.bias',
                                                         'outnorm_0.bias', 'outnorm_0.weight']
    torch.testing.assert_close(backbone.cls_token, cls_model.cls_token)
    torch.testing.assert_close(backbone.pos_embed, cls_model.pos_embed)


def test_pretrained_weights_of_other_scan_directions_are_named_in_a_warning(tmp_path, monkeypatch):
    """A classification run trained with its own --directions, loaded by a backbone of the config's table (the same
    keys and shapes): it loaded without a word."""
    from classification.dense import backbones

    logged = []
    monkeypatch.setattr(backbones, '_log', lambda message, level=20: logged.append((level, message)))
    args = _backbone_args('vim')
    own = [['h', 'v']] * len(args['directions'])
    trained = VisionMamba(**{k: args[k] for k in ('embed_dim', 'depth')}, directions=own)
    path = tmp_path / 'run.pth.tar'
    torch.save({'model': trained.state_dict(), 'epoch': 3, 'directions': own}, path)
    MM_LocalVim(**dict(args, pretrained=str(path))).init_weights()
    warnings = [message for level, message in logged if level == 30]
    assert warnings == [f"MM_LocalVim: {path} was trained with other scan directions (layer 0: ['h', 'v'] vs "
                        f"{list(args['directions'][0])} here): its weights fine-tune this backbone's directions (set "
                        f"the backbone's directions= to its run's directions.yaml to keep them)"]
    logged.clear()
    MM_LocalVim(**dict(args, directions=own, pretrained=str(path))).init_weights()
    assert [message for level, message in logged if level == 30] == []


def test_a_directions_file_of_an_unfinished_or_other_search_is_named_in_a_warning(tmp_path, monkeypatch):
    """directions= vis_search_prob.py's file of a search stopped halfway, of a LocalVMamba search for a LocalVim
    backbone, or of other stage depths: the backbone was built without a word, where tools/train.py --directions
    warns."""
    from classification.dense import backbones
    from classification.models.directions import save_directions

    logged = []
    monkeypatch.setattr(backbones, '_log', lambda message, level=20: logged.append((level, message)))
    args = _backbone_args('vssm')
    path = tmp_path / 'directions.yaml'
    save_directions(path, args['directions'], supernet='local_vssm_tiny_search', topk=4,
                    searched_from={'model_kwargs': {'depths': [1, 1, 1, 1]}, 'finished': False,
                                   'unfinished': 'saved in the middle of epoch 0 of epochs 0-1, after its step 17'})
    MM_LocalVSSM(**dict(args, directions=str(path)))
    assert [message for level, message in logged if level == 30] == [
        f'{path} holds the directions of an unfinished search (saved in the middle of epoch 0 of epochs 0-1, after '
        f'its step 17)']
    logged.clear()
    save_directions(path, [*args['directions'], ['h', 'v', 'w2', 'w7']], supernet='local_vssm_tiny_search', topk=4,
                    searched_from={'model_kwargs': {'depths': [1, 1, 2, 1]}, 'finished': True})
    MM_LocalVSSM(**dict(args, directions=str(path), depths=(2, 1, 1, 1)))
    assert [message for level, message in logged if level == 30] == [
        f"{path} was searched with stage depths (1, 1, 2, 1), MM_LocalVSSM has (2, 1, 1, 1): its stages take the "
        f"directions searched for other stages' blocks"]
    logged.clear()
    vim = _backbone_args('vim')
    save_directions(path, vim['directions'], supernet='local_vssm_tiny_search', topk=4,
                    searched_from={'finished': True})
    MM_LocalVim(**dict(vim, directions=str(path)))
    assert [message for level, message in logged if level == 30] == [
        f'{path} holds the directions searched by local_vssm_tiny_search (a LocalVMamba supernet), but MM_LocalVim is '
        f'a LocalVim model: its layers take them as given']


def test_a_load_from_checkpoint_of_other_scan_directions_is_named_in_a_warning(tmp_path, ade_inputs_at_hand,
                                                                               monkeypatch):
    """A fresh run fine-tuning a det/seg checkpoint (``load_from``) of other directions than the config's backbone
    (the same keys and shapes): loaded without a word, where the backbone's pretrained file warns."""
    from mmengine.config import Config

    from classification.dense import mm_checkpoint

    logged = []
    monkeypatch.setattr(mm_checkpoint, 'print_log', lambda message, logger=None, level=20: logged.append(
        (level, message)), raising=False)
    cfg = Config.fromfile(SEG_CONFIG)
    cfg.merge_from_dict({'model.backbone.pretrained': None, 'load_from': 'coco/iter_8.pth'})
    cfg.work_dir, cfg.launcher = str(tmp_path / 'work'), 'none'
    runner = launch._build_runner(cfg)
    own = [list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS]
    other = [['h', 'v']] + own[1:]
    for directions in (own, other):
        runner.call_hook('after_load_checkpoint', checkpoint={'directions': directions})
    assert [message for level, message in logged if level == 30] == [
        f"load_from coco/iter_8.pth was trained with other scan directions (layer 0: ['h', 'v'] vs {own[0]} here): "
        f"its weights fine-tune this backbone's directions (set model.backbone.directions=coco/iter_8.pth to keep "
        f"them)"]


def test_a_fresh_run_without_its_pretrained_file_stops_before_anything_is_built(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """The backbone found a missing pretrained file only in init_weights, after mmengine had built the datasets
    (minutes for COCO); --overwrite had already deleted the earlier run's checkpoints by then. A resumed run never
    reads that file."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    (tmp_path / 'checkpoints' / 'local_vssm_tiny.pth').unlink()
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_4.pth').write_text('x')
    for argv in ([], ['--overwrite'], ['--resume'], ['--cfg-options', 'model.backbone.pretrained=elsewhere/vssm.pth']):
        with pytest.raises(SystemExit) as exit_info:
            launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work)] + argv)
        assert exit_info.value.code == 2
        path = argv[-1].split('=')[1] if argv[:1] == ['--cfg-options'] else 'checkpoints/local_vssm_tiny.pth'
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"error: MM_LocalVSSM: pretrained checkpoint not found: {path} (set model.backbone.pretrained to your "
            f"file, or to None to start from random weights)")
    assert os.listdir(work) == ['iter_4.pth']
    (work / 'last_checkpoint').write_text(f'{work}/iter_4.pth')
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(train=lambda: None))
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume'])


@pytest.mark.parametrize('task, config, name, key, path', [
    ('detection', 'mask_rcnn_local_vssm_tiny_fpn_coco.py', 'MM_LocalVSSM', 'pretrained',
     'checkpoints/local_vssm_tiny.pth'),
    ('detection', 'vitdet_cascade_mask-rcnn_local_vim_small_lsj-100e.py', 'MM_LocalVim', 'pretrained_ckpt',
     'checkpoints/local_vim_small_searched.pth'),
    ('segmentation', 'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py', 'MM_LocalVSSM', 'pretrained',
     'checkpoints/local_vssm_tiny.pth'),
    ('segmentation', 'upernet_local_vim-small_8xb2-160k_ade20k-512x512.py', 'MM_LocalVim', 'pretrained_ckpt',
     'checkpoints/local_vim_small_searched.pth'),
])
def test_a_missing_pretrained_file_is_named_by_the_key_the_config_set(tmp_path, monkeypatch, capsys, task, config,
                                                                      name, key, path):
    """The message told users to set "pretrained or pretrained_ckpt", while the LocalVMamba configs set pretrained and
    the LocalVim ones pretrained_ckpt: the other key changed nothing (setting it to None), or was refused only after
    the missing file (setting it to a file)."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'mine.pth').write_bytes(b'')
    other = 'pretrained_ckpt' if key == 'pretrained' else 'pretrained'
    argv = [os.path.join(REPO, task, 'configs', 'local_mamba', config), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options']
    for option, message in (
            (f'{other}=None', f'{name}: pretrained checkpoint not found: {path} (set model.backbone.{key} to your '
                              f'file, or to None to start from random weights)'),
            (f'{other}=mine.pth', f"{name}: pass one of model.backbone.pretrained='{path}' and "
                                  f"model.backbone.pretrained_ckpt='mine.pth' (set the other to None)"
             if key == 'pretrained' else
             f"{name}: pass one of model.backbone.pretrained='mine.pth' and "
             f"model.backbone.pretrained_ckpt='{path}' (set the other to None)")):
        with pytest.raises(SystemExit) as exit_info:
            launch.train_main(task, argv + [f'model.backbone.{option}'])
        assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (2, f'error: {message}')


def test_an_init_cfg_of_the_backbone_is_checked_before_anything_is_built(tmp_path, monkeypatch, capsys):
    """mmdet's idiom for a backbone's weights, init_cfg=dict(type='Pretrained', checkpoint=...), was a TypeError
    traceback; now its file is checked as pretrained's is, and another init_cfg is refused in one line."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    monkeypatch.chdir(tmp_path)
    config = os.path.join(REPO, 'segmentation', 'configs', 'local_mamba',
                          'upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    argv = [config, '--work-dir', str(tmp_path / 'work'), '--cfg-options', 'model.backbone.pretrained=None']
    for options, message in (
            (['model.backbone.init_cfg.type=Pretrained', 'model.backbone.init_cfg.checkpoint=coco/mask_rcnn.pth'],
             'MM_LocalVSSM: pretrained checkpoint not found: coco/mask_rcnn.pth (set '
             'model.backbone.init_cfg.checkpoint to your file, or to None to start from random weights)'),
            (['model.backbone.init_cfg.type=Kaiming'],
             "MM_LocalVSSM: model.backbone.init_cfg={'type': 'Kaiming'}: the backbone starts from its classification "
             "model's initialisation, and the one init_cfg it takes is dict(type='Pretrained', checkpoint=FILE) (with "
             "prefix= and map_location= if wanted); or give pretrained=FILE")):
        with pytest.raises(SystemExit) as exit_info:
            launch.train_main('segmentation', argv + options)
        assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (2, f'error: {message}')


def test_missing_data_and_checkpoints_stop_before_anything_is_built(tmp_path, ade_inputs_at_hand, monkeypatch,
                                                                    capsys):
    """mmengine found a missing data folder, annotation file or checkpoint with a traceback, after building the model
    (and, for the checkpoint, the datasets)."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    ade = 'data/ade/ADEChallengeData2016'
    coco = os.path.join(REPO, 'detection', 'configs', 'local_mamba', 'mask_rcnn_local_vssm_tiny_fpn_coco.py')
    (tmp_path / 'data' / 'coco' / 'annotations').mkdir(parents=True)
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    work = ['--work-dir', str(tmp_path / 'work')]
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'iter_8.pth').write_bytes(b'')
    (tmp_path / 'run' / 'iter_16.pth').write_bytes(b'')
    cases = [
        (launch.test_main, 'segmentation', [SEG_CONFIG, 'nosuch.pth'], 'checkpoint not found: nosuch.pth'),
        (launch.test_main, 'segmentation', [SEG_CONFIG, 'run'],
         'run is a folder: give one of its checkpoint files (iter_16.pth, iter_8.pth)'),
        (launch.train_main, 'segmentation', [SEG_CONFIG, '--resume', 'run'],
         '--resume: run is a folder: give one of its checkpoint files (iter_16.pth, iter_8.pth)'),
        (launch.train_main, 'segmentation', [SEG_CONFIG, '--resume', 'run/nosuch.pth'],
         '--resume: checkpoint not found: run/nosuch.pth'),
        (launch.test_main, 'segmentation', [SEG_CONFIG, 'ckpt.pth', '--cfg-options', 'test_dataloader.dataset.'
                                            'data_prefix.img_path=images/test'],
         f'test_dataloader.dataset.data_prefix.img_path: {ade}/images/test is not a folder'),
        (launch.train_main, 'segmentation', [SEG_CONFIG, '--cfg-options', 'train_dataloader.dataset.data_root=ade'],
         'train_dataloader.dataset.data_root: ade is not a folder (put the dataset there, or give its place with '
         '--cfg-options train_dataloader.dataset.data_root=PATH)'),
        (launch.train_main, 'segmentation', [SEG_CONFIG, '--cfg-options', 'val_dataloader.dataset.data_root=ade'],
         'val_dataloader.dataset.data_root: ade is not a folder (put the dataset there, or give its place with '
         '--cfg-options val_dataloader.dataset.data_root=PATH)'),
        (launch.train_main, 'detection', [coco, '--cfg-options', 'model.backbone.pretrained=None'],
         'train_dataloader.dataset.ann_file: data/coco/annotations/instances_train2017.json not found'),
    ]
    for main, task, argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(task, argv + work)
        assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (2, f'error: {message}')


def test_a_coco_evaluators_missing_annotation_file_stops_before_anything_is_built(tmp_path, monkeypatch, capsys):
    """CocoMetric reads its own ann_file (data_root + the file, fixed when the config was read): COCO moved with
    --cfg-options ...dataset.data_root=PATH, as the data check advises, left the evaluators at data/coco/, and
    mmengine stopped with pycocotools' FileNotFoundError traceback when it built them."""
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    monkeypatch.chdir(tmp_path)
    coco = tmp_path / 'coco'
    for folder in ('annotations', 'train2017', 'val2017'):
        (coco / folder).mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (coco / 'annotations' / f'instances_{split}.json').write_text('{}')
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    config = os.path.join(REPO, 'detection', 'configs', 'local_mamba', 'mask_rcnn_local_vssm_tiny_fpn_coco.py')
    work = ['--work-dir', str(tmp_path / 'work')]
    moved = [f'{loader}.dataset.data_root={coco}/' for loader in ('train_dataloader', 'val_dataloader',
                                                                  'test_dataloader')]
    cases = [(launch.train_main, [config, *work, '--cfg-options', 'model.backbone.pretrained=None', *moved], 'val'),
             (launch.test_main, [config, 'ckpt.pth', *work, '--cfg-options', *moved], 'test')]
    for main, argv, split in cases:
        with pytest.raises(SystemExit) as exit_info:
            main('detection', argv)
        assert (exit_info.value.code, capsys.readouterr().err.splitlines()[-1]) == (
            2, f'error: {split}_evaluator.ann_file: data/coco/annotations/instances_val2017.json not found (the '
               f'evaluator reads the annotations itself: give their place with --cfg-options '
               f'{split}_evaluator.ann_file=PATH)')

    built = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        train=lambda: built.append(cfg), test=lambda: built.append(cfg)))
    for main, argv, split in cases:
        main('detection', argv + [f'{split}_evaluator.ann_file={coco}/annotations/instances_val2017.json'])
    assert len(built) == 2

    from classification.dense.run_inputs import missing_data_path
    metrics = [dict(type='CocoMetric', ann_file=str(coco / 'annotations' / 'instances_val2017.json')),
               dict(type='CocoMetric', ann_file='gone.json'),
               dict(type='CocoMetric', ann_file='s3://bucket/coco/val.json')]
    assert missing_data_path({'val_dataloader': dict(batch_size=1), 'val_evaluator': metrics}, ['val_dataloader']) == (
        'val_evaluator.1.ann_file: gone.json not found (the evaluator reads the annotations itself: give their place '
        'with --cfg-options val_evaluator.1.ann_file=PATH)')
    found = missing_data_path({'val_dataloader': dict(batch_size=1), 'val_evaluator': metrics[::2]}, ['val_dataloader'])
    assert found is None


def test_the_data_check_passes_what_mmengine_reads_elsewhere_or_never(tmp_path):
    """A data_root read through a storage backend (a URI, or backend_args) is not checked; a test set's annotation
    folder (format_only test sets have none) is not required; wrapped datasets are each checked, by their key."""
    from classification.dense.run_inputs import missing_data_path
    (tmp_path / 'ade' / 'images').mkdir(parents=True)
    ade = dict(type='ADE20KDataset', data_root=str(tmp_path / 'ade'),
               data_prefix=dict(img_path='images', seg_map_path='annotations'))
    remote = dict(type='CocoDataset', data_root='s3://bucket/coco/', ann_file='annotations/train.json',
                  data_prefix=dict(img='train2017/'))
    assert missing_data_path({'train_dataloader': dict(dataset=remote)}, ['train_dataloader']) is None
    assert missing_data_path({'test_dataloader': dict(dataset=ade)}, ['test_dataloader'], images_only=True) is None
    assert missing_data_path({'test_dataloader': dict(dataset=ade)}, ['test_dataloader']) == (
        f"test_dataloader.dataset.data_prefix.seg_map_path: {tmp_path / 'ade' / 'annotations'} is not a folder")
    concat = dict(type='ConcatDataset', datasets=[dict(ade, data_prefix=dict(img_path='images')),
                                                  dict(type='RepeatDataset', times=2, dataset=dict(
                                                      ade, data_root=str(tmp_path / 'gone')))])
    assert missing_data_path({'train_dataloader': dict(dataset=concat)}, ['train_dataloader']) == (
        f"train_dataloader.dataset.datasets.1.dataset.data_root: {tmp_path / 'gone'} is not a folder (put the dataset "
        f"there, or give its place with --cfg-options train_dataloader.dataset.datasets.1.dataset.data_root=PATH)")


def test_a_tested_or_resumed_checkpoint_must_fit_the_model():
    from classification.dense.mm_checkpoint import CheckpointFitHook
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    wrapped = SimpleNamespace(model=model)
    hook = CheckpointFitHook('run/iter_2.pth')
    hook.after_load_checkpoint(wrapped, {'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}})
    other = {'0.weight': torch.zeros(3, 4), '0.bias': torch.zeros(3), 'head.weight': torch.zeros(1)}
    with pytest.raises(CheckpointError) as misfit:
        hook.after_load_checkpoint(wrapped, {'state_dict': other, 'meta': {}})
    assert str(misfit.value) == ("run/iter_2.pth does not fit the model of this config: 1 tensors of other shapes "
                                 "(0.weight: checkpoint (3, 4), model (3, 2)), 2 of the model's 4 tensors missing "
                                 "(1.weight, 1.bias)")


def test_checkpoints_record_the_backbones_directions_and_a_test_refuses_others():
    """Every det/seg checkpoint records its backbone's scan directions (the weights of two tables have the same names
    and shapes), the model wrapped or not; a tested or resumed checkpoint of other directions is refused, naming the
    first layer that differs."""
    from classification.dense.mm_checkpoint import CheckpointFitHook, ScanDirectionsHook

    class Trunk(torch.nn.Module):
        directions = (('h', 'v'), ('w2',))

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    model = torch.nn.Module()
    model.backbone = torch.nn.Module()
    model.backbone.trunk = Trunk()
    runner = SimpleNamespace(model=model)
    checkpoint = {'state_dict': model.state_dict()}
    ScanDirectionsHook().before_save_checkpoint(runner, checkpoint)
    assert checkpoint['directions'] == [['h', 'v'], ['w2']]
    wrapped = {}                                        # a model wrapper (DataParallel, DDP) is looked through
    ScanDirectionsHook().before_save_checkpoint(SimpleNamespace(model=torch.nn.DataParallel(model)), wrapped)
    assert wrapped == {'directions': [['h', 'v'], ['w2']]}
    CheckpointFitHook('run/iter_2.pth').after_load_checkpoint(runner, checkpoint)
    with pytest.raises(CheckpointError) as other:
        CheckpointFitHook('run/iter_2.pth').after_load_checkpoint(runner, dict(checkpoint, directions=[['h'], ['w2']]))
    assert str(other.value).startswith("run/iter_2.pth was trained with other scan directions than this config's "
                                       "backbone (layer 0: ['h'] vs ['h', 'v'] here)")


def test_the_entry_points_check_the_checkpoints_they_test_and_resume(tmp_path, ade_inputs_at_hand, monkeypatch):
    built = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, fit_source=None, *_: SimpleNamespace(
        train=lambda: built.append(fit_source), test=lambda: built.append(fit_source)))
    work = str(tmp_path / 'work')
    (tmp_path / 'run').mkdir()
    for name in ('iter_2.pth', 'iter_4.pth'):
        (tmp_path / 'run' / name).write_bytes(b'')
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', work])
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', work, '--resume'])
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', work, '--resume', 'run/iter_2.pth'])
    launch.test_main('segmentation', [SEG_CONFIG, 'run/iter_4.pth', '--work-dir', work])
    assert built == [None, f'the latest checkpoint in {work}', 'run/iter_2.pth', 'run/iter_4.pth']


def test_a_resumed_run_does_not_read_the_pretrained_file(tmp_path, ade_inputs_at_hand, monkeypatch):
    """mmengine initialises the weights before it resumes: a resumed run read the backbone's pretrained file for
    nothing, and failed where that file was not at hand (another machine). A fresh start, and --resume with no
    checkpoint in the work_dir (mmengine then starts afresh), still load it."""
    pretrained = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        train=lambda: pretrained.append(cfg.model.backbone.pretrained)))
    work = tmp_path / 'work'
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'iter_2.pth').write_bytes(b'')
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work)])
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume'])
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume', 'run/iter_2.pth'])
    (work / 'last_checkpoint').write_text(f'{work}/iter_8.pth')
    (work / 'iter_8.pth').write_bytes(b'')
    launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume'])
    assert pretrained == ['checkpoints/local_vssm_tiny.pth'] * 2 + [None, None]


def test_a_tested_checkpoint_does_not_read_the_pretrained_file(tmp_path, ade_inputs_at_hand, monkeypatch):
    """The checkpoint holds every weight: test.py builds the backbone without its pretrained file(s), so a config
    that names two of them (refused when the backbone was built: a traceback) tests as well."""
    backbones = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        test=lambda: backbones.append(dict(cfg.model.backbone))))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'iter_2.pth').write_bytes(b'')
    launch.test_main('segmentation', [SEG_CONFIG, 'run/iter_2.pth', '--work-dir', str(tmp_path / 'work'),
                                      '--cfg-options', 'model.backbone.pretrained_ckpt=other.pth'])
    assert (backbones[0]['pretrained'], backbones[0]['pretrained_ckpt']) == (None, None)


def test_a_tested_checkpoint_is_loaded_not_resumed(tmp_path, ade_inputs_at_hand, monkeypatch):
    """The config a resumed run saves in its work_dir holds resume=True: testing with it resumed the training state
    (built the optimizer and the training set, a traceback where that set was not at hand). test.py loads the
    weights only."""
    tested = []
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(
        test=lambda: tested.append((cfg.resume, cfg.load_from))))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'iter_4.pth').write_bytes(b'')
    saved = tmp_path / 'run' / 'saved.py'     # as mmengine dumps a resumed run's config
    saved.write_text(f"_base_ = {SEG_CONFIG!r}\nresume = True\nload_from = 'run/iter_2.pth'\n")
    launch.test_main('segmentation', [str(saved), 'run/iter_4.pth', '--work-dir', str(tmp_path / 'work')])
    assert tested == [(False, 'run/iter_4.pth')]


def test_the_test_tool_refuses_a_classification_checkpoint(tmp_path):
    from test_mm_tools import TINY_CONFIG, _ade_folder
    root = str(tmp_path / 'ade')
    _ade_folder(root)
    config = tmp_path / 'tiny_upernet_local_vssm.py'
    config.write_text(TINY_CONFIG.format(base=SEG_CONFIG, hw=IMAGE_HW, root=root, ckpt=None,
                                         directions=[list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]]))
    checkpoint = tmp_path / 'classifier.pth'
    torch.save({'model': {'patch_embed.0.weight': torch.zeros(1)}, 'epoch': 3}, checkpoint)
    proc = _run_tool('test.py', str(config), str(checkpoint), '--work-dir', str(tmp_path / 'work'))
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {checkpoint} does not fit the model of this config: 179 of the model's 179 tensors missing "
        f"(backbone.patch_embed.0.weight, backbone.patch_embed.0.bias, backbone.patch_embed.2.weight)")


def test_a_misspelt_cfg_options_key_ends_in_one_line(tmp_path, ade_inputs_at_hand):
    def start(work: str, *options: str) -> subprocess.Popen:    # both commands at once, each in its own work_dir
        return start_seg_tool('train.py', SEG_CONFIG, '--work-dir', str(tmp_path / work), '--cfg-options', *options,
                              cwd=str(tmp_path))

    misspelt = start('work', 'model.backbone.pretraned=x')
    # a new dict under a class's arguments (a misspelt norm_cfg of the head, not the backbone, which refuses keys it
    # does not take by name): the refused keyword is a middle part of the keys, and the TypeError ended in a traceback
    new_dict = start('work_norm_cfg', 'model.decode_head.norm_cfgg.type=SyncBN',
                     'model.decode_head.norm_cfgg.requires_grad=True')
    for proc, message in (
            (misspelt, "error: model.backbone: MM_LocalVSSM does not take 'pretraned'; did you mean pretrained, "
                       "pretrained_key, pretrained_ckpt?"),
            (new_dict, "error: BaseDecodeHead.__init__() got an unexpected keyword argument 'norm_cfgg': "
                       "--cfg-options model.decode_head.norm_cfgg is not a key of the config (misspelt?)")):
        done = finish(proc, timeout=300)
        assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr[-3000:]
        assert done.stderr.strip().splitlines()[-1] == message


@pytest.mark.parametrize('task, config, framework', [('detection', DET_CONFIG, 'mmdet'),
                                                     ('segmentation', SEG_CONFIG, 'mmseg')])
def test_a_framework_that_cannot_be_imported_is_named_in_one_line(monkeypatch, capsys, task, config, framework):
    """mmengine reports a plugin whose framework (mmdet, mmseg, mmcv's ops) is missing or broken with a traceback
    that blames the config's custom_imports and suggests PYTHONPATH: the tools name the import and the install."""
    monkeypatch.delitem(sys.modules, launch.PLUGINS[task], raising=False)
    monkeypatch.setitem(sys.modules, f'{framework}.registry', None)
    failed = f'import of {framework}.registry halted; None in sys.modules'
    hint = launch.MM_INSTALL_HINT
    for main, argv in ((launch.train_main, [config]), (launch.test_main, [config, 'ckpt.pth'])):
        with pytest.raises(SystemExit) as exit_info:
            main(task, argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f'error: {task} needs mmengine, mmcv and {framework}; the import failed ({failed}): {hint}')
    with pytest.raises(SystemExit) as exit_info:    # a config that does not exist is named first
        launch.train_main(task, ['nosuch.py'])
    assert capsys.readouterr().err.strip().splitlines()[-1] == 'error: config file not found: nosuch.py'
    with pytest.raises(SystemExit) as exit_info:    # what mamba_get_flops.py reads its config with
        launch.read_config(config)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'error: {config}: importing what the config needs failed ({failed}): {hint}')
    monkeypatch.setitem(sys.modules, launch.PLUGINS[task], None)    # the plugin itself cannot be found
    assert launch.framework_problem(task) == (
        f'cannot import {launch.PLUGINS[task]} (import of {launch.PLUGINS[task]} halted; None in sys.modules): run '
        f'`pip install -e .` in the repository, or put its root on PYTHONPATH')


@pytest.mark.parametrize('item, message', [
    ('model.backbone.out_indices=[4]',
     'MM_LocalVSSM: out_indices (4,): [4] out of range for its 4 stages (0 to 3, or -1 to -4 from the end)'),
    ('model.backbone.directions=[[h,v]]', 'directions: has 1 layers, but the model has 15 layers'),
    ('model.backbone.directions=none.yaml', 'directions file not found: none.yaml (relative to the current directory '
                                            '{cwd})'),
])
def test_a_backbone_setting_it_refuses_ends_in_one_line(tmp_path, ade_inputs_at_hand, capsys, item, message):
    """The backbone's refusal of a directions table or file, or of out_indices, was a traceback (after the
    datasets were built, for training): one line naming the backbone's config key."""
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    for main, argv in ((launch.train_main, [SEG_CONFIG]), (launch.test_main, [SEG_CONFIG, 'ckpt.pth'])):
        with pytest.raises(SystemExit) as exit_info:
            main('segmentation', argv + ['--work-dir', str(tmp_path / 'work'), '--cfg-options', item])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f'error: model.backbone: {message.format(cwd=tmp_path)}')


ONE_PROCESS = ("train with at least 2 images per step (train_dataloader.batch_size): a single process's BatchNorm, "
               "SyncBN included, normalises its own images")


@pytest.mark.parametrize('processes, cuda, advice', [
    (None, False, ONE_PROCESS),
    (1, True, ONE_PROCESS),
    (2, False, "train with at least 2 images per process and step (train_dataloader.batch_size): without CUDA, SyncBN "
               "runs as BatchNorm, which normalises each process's own images"),
    (2, True, "train with at least 2 images per process and step (train_dataloader.batch_size): a BatchNorm layer "
              "normalises each process's own images (SyncBN counts those of all processes)"),
], ids=['no_process_group', 'one_gpu_process', 'cpu_processes_bn_for_syncbn', 'gpu_processes'])
def test_a_training_step_of_one_image_through_batchnorm_ends_in_one_line(monkeypatch, capsys, processes, cuda,
                                                                         advice):
    """UperNet's pooled 1x1 map under BatchNorm refuses a step of one image deep inside the run: one line that says
    what counts. It said 'over all processes' everywhere, true only of SyncBN on several GPUs (which never refuses
    one image per process): one process's BatchNorm, SyncBN included, and the BatchNorm that replaces SyncBN in a
    CPU run of several processes normalise each process's own images."""
    import torch.distributed as dist

    def one_image_step():
        torch.nn.BatchNorm2d(4).train()(torch.zeros(1, 4, 1, 1))

    if processes is not None:
        monkeypatch.setattr(dist, 'is_initialized', lambda: True)
        monkeypatch.setattr(dist, 'get_world_size', lambda group=None: processes)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    with pytest.raises(SystemExit) as exit_info:
        launch.run_step(one_image_step)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: Expected more than 1 value per channel when training, got input size torch.Size([1, 4, 1, 1]): a "
        f"BatchNorm layer (e.g. of UperNet's 1x1 pooled map) saw one image; {advice}")
    with pytest.raises(ValueError, match='other'):
        launch.run_step(lambda: (_ for _ in ()).throw(ValueError('other')))


def test_a_cfg_options_item_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [SEG_CONFIG, '--cfg-options', 'train_cfg.max_iters'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        ": error: argument --cfg-options: expected KEY=VALUE items, got 'train_cfg.max_iters'")


@pytest.mark.parametrize('item', [
    "train_cfg.max_iters=[1,2", "custom_hooks=[dict(type='EMAHook',momentum=0.0002)]",
    "custom_hooks=[dict(type='EMAHook')]", "model.backbone.init_cfg=dict(type='Pretrained')"])
def test_a_cfg_options_value_mmengine_cannot_read_is_a_usage_error(item):
    """mmengine's parser stopped on unbalanced brackets with an AssertionError traceback, and on a dict(...) of
    several items with a RecursionError one; it passed a dict(...) of one item on as text, which the run refused
    with a traceback once the datasets and the model were built."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    launch.add_cfg_options(parser, 'overrides')
    parsed = parser.parse_args(['--cfg-options', 'a=1', 'b=[2,(3,4)]', 'c=x']).cfg_options
    assert parsed == dict(a=1, b=[2, (3, 4)], c='x')
    with pytest.raises(argparse.ArgumentError) as refused:
        parser.parse_args(['--cfg-options', 'a=1', item])
    assert str(refused.value) == (
        f'argument --cfg-options: cannot read the value of {item!r}: a value is a number, text, True, False, None or '
        f'a [list] or (tuple) of them, its brackets balanced; set a dict in a config file')


@pytest.mark.parametrize('item, message', [
    ('train_cfg.max_iters=16O000', 'the config holds a number there (160000), not text'),
    ('optim_wrapper.optimizer.lr=6e-5x', 'the config holds a number there (6e-05), not text'),
    ('default_hooks.checkpoint.by_epoch=no', 'the config holds True or False there (False), not text'),
])
def test_cfg_options_text_for_a_number_is_refused_before_the_run(capsys, item, message):
    """mmengine passes ``max_iters=16O000`` on as the text '16O000', which fails deep inside the run: refused in one
    line where the config holds a number or a boolean."""
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', 'unused', '--cfg-options', item])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: --cfg-options {item}: {message}'


def test_cfg_options_that_fit_the_config_pass_the_type_check():
    from mmengine.config import Config
    cfg = Config.fromfile(SEG_CONFIG)
    fitting = {'model.backbone.pretrained': 'other.pth', 'train_cfg.max_iters': 80000,
               'optim_wrapper.optimizer.lr': None, 'new.key': 'text', 'default_hooks.checkpoint.by_epoch': True}
    assert run_inputs.wrong_type_option(cfg, fitting) is None


def test_detection_results_go_to_a_pickle_file(capsys):
    config = os.path.join(REPO, 'detection', 'configs', 'local_mamba', 'mask_rcnn_local_vssm_tiny_fpn_coco.py')
    with pytest.raises(SystemExit) as exit_info:
        launch.test_main('detection', [config, 'ckpt.pth', '--out', 'results.json'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        ': error: --out must be a .pkl file for detection, got results.json')


def test_a_work_dir_that_cannot_be_written_ends_in_one_line(tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: pytest.fail('the runner was built'))
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    for work, message in ((blocker, f'work_dir {blocker} is a file, not a folder'),
                          (blocker / 'run', f'cannot write to work_dir {blocker / "run"}: Not a directory')):
        for main, argv in ((launch.train_main, [SEG_CONFIG]), (launch.test_main, [SEG_CONFIG, 'ckpt.pth'])):
            with pytest.raises(SystemExit) as exit_info:
                main('segmentation', argv + ['--work-dir', str(work)])
            assert exit_info.value.code == 2
            assert capsys.readouterr().err.splitlines()[-1] == f'error: {message}'


def test_trust_checkpoint_stays_out_of_the_config(monkeypatch):
    """--trust-checkpoint is set on the built backbones (test_mm_checkpoint runs it): the config, which mmengine saves
    into the work_dir, is the same with or without it."""
    from mmengine.runner import CheckpointLoader
    monkeypatch.setenv('LOCAL_RANK', '0')
    schemes = dict(CheckpointLoader._schemes)
    args = dict(config=SEG_CONFIG, launcher='none', cfg_options=None, work_dir=None, local_rank=0)
    try:
        trusted = launch._load_config(argparse.Namespace(trust_checkpoint=True, **args))
        plain = launch._load_config(argparse.Namespace(trust_checkpoint=False, **args))
    finally:
        CheckpointLoader._schemes = schemes
    assert trusted.pretty_text == plain.pretty_text and 'trust_checkpoint' not in trusted.pretty_text


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint_to_resume(tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(train=interrupted))
    monkeypatch.setenv('RANK', '0')
    work = tmp_path / 'work'
    for pointer, hint in ((None, 'no checkpoint was saved yet, nothing to resume'),
                          (f'{work}/iter_8.pth', f'the command with --resume (and no path) continues from '
                                                 f'{work}/iter_8.pth'),
                          ('/moved/from/iter_8.pth', f'the command with --resume (and no path) continues from '
                                                     f'{work}/iter_8.pth')):
        if pointer:
            (work / 'last_checkpoint').write_text(pointer)
            (work / 'iter_8.pth').write_bytes(b'')
        argv = [SEG_CONFIG, '--work-dir', str(work)] + (['--resume'] if pointer else [])
        try:
            launch.train_main('segmentation', argv)
            status = 'no exit'
        except SystemExit as exit_info:
            status = exit_info.code
        except KeyboardInterrupt:
            status = 'KeyboardInterrupt escaped'
        assert status == 130
        assert capsys.readouterr().err.splitlines()[-1] == f'interrupted; {hint}'


def test_sigterm_ends_in_one_line_naming_the_checkpoint_and_leaves_forked_workers_to_die_quietly(
        tmp_path, ade_inputs_at_hand, monkeypatch, capsys):
    """SIGTERM (scancel, a preemption, torchrun passing it on) ended the run with no word of where to resume; a
    process forked during the run (a loader worker: Slurm signals it too) still ends on it at once."""
    import signal
    import time

    def forked_worker_then_terminated():
        child = os.fork()
        if child == 0:                                 # the worker: waits for its SIGTERM
            time.sleep(30)
            os._exit(0)
        time.sleep(0.2)                                # let it start
        os.kill(child, signal.SIGTERM)
        assert os.waitpid(child, 0)[1] == signal.SIGTERM    # killed by it, as with the default handler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(launch, '_build_runner', lambda cfg, *_: SimpleNamespace(train=forked_worker_then_terminated))
    monkeypatch.setenv('RANK', '0')
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text(f'{work}/iter_8.pth')
    (work / 'iter_8.pth').write_bytes(b'')
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        launch.train_main('segmentation', [SEG_CONFIG, '--work-dir', str(work), '--resume'])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'interrupted by SIGTERM; the command with --resume (and no path) continues from {work}/iter_8.pth')
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize('name', ['SIGUSR1', 'SIGHUP'])
def test_slurms_warning_and_a_hang_up_end_in_one_line_with_the_signals_status(tmp_path, monkeypatch, capsys, name):
    """SIGUSR1 (Slurm's warning before the time limit, which torchrun passes on) and SIGHUP (a lost ssh session) killed
    a det/seg run with no word of where to resume; now they end it as SIGTERM does, with 128 + their number."""
    import signal
    import time
    sig = getattr(signal, name)

    def signalled_step():
        os.kill(os.getpid(), sig)
        time.sleep(30)

    monkeypatch.setenv('RANK', '0')
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text(f'{work}/iter_8.pth')
    (work / 'iter_8.pth').write_bytes(b'')
    handler = signal.getsignal(sig)
    with pytest.raises(SystemExit) as exit_info:
        launch.run_step(signalled_step, resume_from=str(work))
    assert exit_info.value.code == 128 + sig
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'interrupted by {name}; the command with --resume (and no path) continues from {work}/iter_8.pth')
    assert signal.getsignal(sig) is handler


def test_a_hang_up_ignored_from_the_start_stays_ignored(monkeypatch):
    """A det/seg run started under nohup goes on when its terminal hangs up."""
    import signal
    import time
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def hung_up_step():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        return 'went on'

    try:
        assert launch.run_step(hung_up_step) == 'went on'
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_default_work_dir_is_work_dirs_and_the_config_name_without_py(monkeypatch):
    """As mmdet's and mmseg's tools: ``./work_dirs/<config file name without .py>``, unless --work-dir is given."""
    from mmengine.runner import CheckpointLoader
    monkeypatch.setenv('LOCAL_RANK', '0')
    schemes = dict(CheckpointLoader._schemes)
    args = dict(config=SEG_CONFIG, launcher='none', cfg_options=None, local_rank=0, trust_checkpoint=False)
    try:
        default = launch._load_config(argparse.Namespace(work_dir=None, **args))
        given = launch._load_config(argparse.Namespace(work_dir='runs/mine', **args))
    finally:
        CheckpointLoader._schemes = schemes
    stem = os.path.basename(SEG_CONFIG)[:-len('.py')]
    assert default.work_dir == f'./work_dirs/{stem}' and given.work_dir == 'runs/mine'
