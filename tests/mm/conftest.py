"""Helpers for the mmdet / mmseg plugin tests: the real configs, shrunk copies of them for quick CPU steps, and
classification checkpoints written by tools/train.py."""
from __future__ import annotations

import argparse
import copy
import glob
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DET_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'detection', 'configs', 'local_mamba', '*.py')))
SEG_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'segmentation', 'configs', 'local_mamba', '*.py')))
INSTALL_HINT = 'run `bash tools/install_mm.sh` (mmcv 2.1.0 with ops, mmdet 3.3.0, mmsegmentation 1.2.2)'

# Non-square inputs everywhere: height 128, width 160.
IMAGE_HW = (128, 160)


def start_seg_tool(script: str, *args: str, cwd: str | None = None) -> subprocess.Popen:
    """``segmentation/tools/SCRIPT ARGS`` started in a subprocess, its stdout and stderr captured apart, so that a
    test can start two and wait for both (:func:`finish`)."""
    return subprocess.Popen([sys.executable, os.path.join(REPO, 'segmentation', 'tools', script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def finish(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    """Wait for ``proc`` and return its status and output as ``subprocess.run`` would."""
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def require(framework: str):
    """Import mmdet or mmseg, or skip the calling test module with the install hint."""
    return pytest.importorskip(framework, reason=f'{framework} is not installed: {INSTALL_HINT}')


def det_config(name: str):
    from mmengine.config import Config
    return Config.fromfile(os.path.join(REPO, 'detection', 'configs', 'local_mamba', name))


def seg_config(name: str):
    from mmengine.config import Config
    return Config.fromfile(os.path.join(REPO, 'segmentation', 'configs', 'local_mamba', name))


@pytest.fixture
def ade_inputs_at_hand(tmp_path, monkeypatch):
    """Run from a folder that holds what the ADE20K configs name by relative paths: the pretrained
    ``checkpoints/local_vssm_tiny.pth`` (an empty file) and the data folders (empty), for the tests that stop before
    the model or the datasets are built."""
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'local_vssm_tiny.pth').write_bytes(b'')
    for kind in ('images', 'annotations'):
        for split in ('training', 'validation'):
            (tmp_path / 'data' / 'ade' / 'ADEChallengeData2016' / kind / split).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_vim_backbone(cfg_backbone: dict, depth: int, out_indices: list[int], width: int = 32) -> dict:
    """The config's LocalVim backbone, narrow and shallow, built for a 64x64 grid (inputs are resized on the fly)."""
    backbone = copy.deepcopy(dict(cfg_backbone))
    backbone.update(embed_dim=width, depth=depth, img_size=64, out_indices=out_indices, pretrained_ckpt=None,
                    directions=backbone['directions'][:depth])
    return backbone


def tiny_vssm_backbone(cfg_backbone: dict, dims: int = 16) -> dict:
    """The config's LocalVMamba backbone with one block per stage."""
    backbone = copy.deepcopy(dict(cfg_backbone))
    backbone.update(dims=dims, depths=(1, 1, 1, 1), pretrained=None, directions=backbone['directions'][:4])
    return backbone


def apply_advice(cfg, problem: str) -> None:
    """Merge the --cfg-options that ``problem`` advises into ``cfg``, parsed as the tools parse them."""
    from classification.dense import launch

    parser = argparse.ArgumentParser()
    launch.add_cfg_options(parser, '')
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *problem.split('set --cfg-options ')[1].split()])
                        .cfg_options)


def our_maps(scope: str, backbone: dict) -> list:
    """The maps our ``backbone`` (its config in the tests' short form: MM_LocalVim with its depth, or MM_LocalVSSM of
    four blocks), built as mmdet or mmseg (``scope``) builds it, gives for one 64x64 image: a list, or mmdet's one
    LocalVim map bare."""
    from mmengine.registry import MODELS, init_default_scope

    from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS

    import detection.local_mamba  # noqa: F401  (our backbones in both registries)
    import segmentation.local_mamba  # noqa: F401

    if backbone['type'] == 'MM_LocalVSSM':
        directions = LOCAL_VSSM_TINY_DIRECTIONS[:4]
    else:
        directions = LOCAL_VIM_TINY_DIRECTIONS[:backbone['depth']]
    init_default_scope(scope)
    torch.manual_seed(0)
    built = MODELS.build(dict(backbone, directions=directions)).eval()
    with torch.no_grad():
        return built(torch.zeros(1, 3, 64, 64))


def shrink_mask_rcnn(model: dict, width: int = 32) -> dict:
    """Narrow Mask R-CNN heads and few sampled boxes, for quick CPU steps."""
    model = copy.deepcopy(model)
    model['neck']['out_channels'] = width
    model['rpn_head'].update(in_channels=width, feat_channels=width)
    roi = model['roi_head']
    roi['bbox_roi_extractor']['out_channels'] = width
    roi['mask_roi_extractor']['out_channels'] = width
    roi['bbox_head'].update(in_channels=width, fc_out_channels=width)
    if 'conv_out_channels' in roi['bbox_head']:
        roi['bbox_head']['conv_out_channels'] = width
    roi['mask_head'].update(in_channels=width, conv_out_channels=width)
    model['train_cfg']['rpn']['sampler']['num'] = 64
    model['train_cfg']['rpn_proposal'].update(nms_pre=200, max_per_img=100)
    model['train_cfg']['rcnn']['sampler']['num'] = 32
    model['test_cfg']['rpn'].update(nms_pre=200, max_per_img=100)
    return model


def tiny_vitdet_model_cfg() -> tuple:
    """The LocalVim-T ViTDet config and its model, with a two-layer backbone and narrow heads: (config, model dict)."""
    cfg = det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vim_backbone(model['backbone'], depth=2, out_indices=[1], width=32)
    model['neck'].update(backbone_channel=32, in_channels=[8, 16, 32, 32])
    model['data_preprocessor']['batch_augments'][0]['size'] = IMAGE_HW
    return cfg, shrink_mask_rcnn(model)


def tiny_fpn_model_cfg() -> tuple:
    """The LocalVMamba-T Mask R-CNN config and its model, one block per stage and narrow heads: (config, model
    dict)."""
    cfg = det_config('mask_rcnn_local_vssm_tiny_fpn_coco.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['neck']['in_channels'] = [16, 32, 64, 128]
    return cfg, shrink_mask_rcnn(model)


def det_batch(batch_size: int = 2) -> dict:
    """Packed mmdet inputs: random uint8 images of IMAGE_HW with boxes and masks."""
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=batch_size, image_shapes=(3, *IMAGE_HW), num_items=[3] * batch_size,
                          num_classes=80, with_mask=True)


def seg_batch(batch_size: int = 2, num_classes: int = 150) -> dict:
    """Packed mmseg inputs: random uint8 images of IMAGE_HW and label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, *IMAGE_HW), generator=gen, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=IMAGE_HW, ori_shape=IMAGE_HW, pad_shape=IMAGE_HW))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, *IMAGE_HW), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def loss_and_grads(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """One training forward and backward; returns the total loss."""
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return loss.detach()


def assert_backbone_gradients(backbone: torch.nn.Module) -> None:
    """Every trainable backbone parameter got a finite gradient, and the patch embedding a non-zero one."""
    missing = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'no gradient reached {missing}'
    bad = [n for n, p in backbone.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f'non-finite gradients in {bad}'
    patch = next(p for n, p in backbone.named_parameters() if n.startswith('patch_embed'))
    assert patch.grad.abs().sum() > 0


def _train_classifier(out: str, model: str, directions: str, kwargs: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), '--dataset', 'digits', '--model', model,
           '--model-kwargs', *kwargs, '--directions', directions, '--img-size', '32', '-b', '128', '--epochs', '1',
           '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--model-ema', '--model-ema-decay', '0.5',
           '-j', '0', '--output', out, '--experiment', model]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope='session')
def classification_checkpoints(tmp_path_factory) -> dict[str, str]:
    """``last.pth.tar`` of one-epoch tools/train.py runs (with EMA) of a 2-layer LocalVim (width 32, built for 224 by
    its model kwargs: a 14x14 position grid) and a one-block-per-stage LocalVMamba (dims 16), trained on 32x32 digits,
    in parallel."""
    from classification.models.directions import (LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS,
                                                  save_directions)
    out = str(tmp_path_factory.mktemp('classification'))
    vim_dirs, vssm_dirs = os.path.join(out, 'vim.yaml'), os.path.join(out, 'vssm.yaml')
    save_directions(vim_dirs, LOCAL_VIM_TINY_DIRECTIONS[:2])
    save_directions(vssm_dirs, LOCAL_VSSM_TINY_DIRECTIONS[:4])
    runs = {
        'local_vim_tiny': _train_classifier(out, 'local_vim_tiny', vim_dirs,
                                            ['depth=2', 'embed_dim=32', 'img_size=224']),
        'local_vssm_tiny': _train_classifier(out, 'local_vssm_tiny', vssm_dirs, ['dims=16', 'depths=[1,1,1,1]']),
    }
    paths = {}
    for name, proc in runs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f'tools/train.py {name} failed:\n{log[-3000:]}'
        paths[name] = os.path.join(out, name, 'last.pth.tar')
    return paths
