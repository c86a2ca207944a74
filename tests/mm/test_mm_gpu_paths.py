"""What a GPU run of the det/seg configs reads and does, checked on the CPU: the optim wrappers and parameter groups of
the GPU configs as they are (``AmpOptimWrapper`` built, not replaced), the parameters DistributedDataParallel
(``find_unused_parameters=False``, mmengine's default and the configs') needs a gradient for, the dtypes of the
LocalVMamba scan under autocast, the launcher leaving a GPU machine's config alone, and the ViTDet fp16 gradient
compression hook."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from conftest import (IMAGE_HW, REPO, det_batch, det_config, loss_and_grads, require, seg_batch, seg_config,
                      tiny_fpn_model_cfg, tiny_vim_backbone, tiny_vitdet_model_cfg, tiny_vssm_backbone)

require('mmdet')
require('mmseg')

from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS  # noqa: E402

VIM_KWARGS = dict(embed_dim=32, img_size=64, patch_size=16, rms_norm=False, fused_add_norm=False,
                  residual_in_fp32=True, final_pool_type='mean', if_abs_pos_embed=True, if_rope=True,
                  if_rope_residual=True, bimamba_type='v2')


def _vssm(**kwargs):
    from classification.dense.backbones import MM_LocalVSSM
    return MM_LocalVSSM(dims=16, depths=(1, 1, 1, 1), directions=[list(d) for d in LOCAL_VSSM_TINY_DIRECTIONS[:4]],
                        **kwargs)


def _vim(depth: int, **kwargs):
    from classification.dense.backbones import MM_LocalVim
    return MM_LocalVim(depth=depth, directions=[list(d) for d in LOCAL_VIM_TINY_DIRECTIONS[:depth]], **VIM_KWARGS,
                       **kwargs)


def _without_gradient(model: torch.nn.Module) -> list[str]:
    """The trainable parameters that got no gradient: DDP with find_unused_parameters=False stops on them."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


# ---------------------------------------------------------------------------------------------------------------------
# DistributedDataParallel with find_unused_parameters=False


@pytest.mark.parametrize('make, frozen_prefixes', [
    (lambda: _vssm(out_indices=(0, 1, 2)), ('layers.2.downsample.', 'layers.3.')),
    (lambda: _vssm(out_indices=1), ('layers.1.downsample.', 'layers.2.', 'layers.3.')),
    (lambda: _vssm(out_indices=(0, 1, 2, 3)), ()),
    (lambda: _vim(3, out_indices=[0]), ('layers.1.', 'layers.2.')),
    (lambda: _vim(3, out_indices=[0, 2]), ()),
], ids=['vssm_0_1_2', 'vssm_1', 'vssm_all', 'vim_0_of_3', 'vim_0_2_of_3'])
def test_parts_after_the_last_output_are_frozen_and_every_other_parameter_gets_a_gradient(make, frozen_prefixes):
    """The forward stops at the last of out_indices: the layers / stages after it (and that stage's downsampling)
    got no gradient while they required one, and DDP, which mmengine builds with find_unused_parameters=False, then
    stops on a GPU cluster at the second iteration. They are frozen, and stay in the state_dict."""
    torch.manual_seed(0)
    backbone = make()
    outs = backbone(torch.randn(2, 3, 64, 80))
    sum(o.float().sum() for o in (outs if isinstance(outs, list) else [outs])).backward()
    assert _without_gradient(backbone) == []
    frozen = sorted(name for name, p in backbone.named_parameters() if not p.requires_grad)
    expected = sorted(name for name, _ in backbone.named_parameters() if name.startswith(frozen_prefixes))
    assert frozen == expected
    assert all(name in backbone.state_dict() for name in frozen)
    if frozen_prefixes:
        assert frozen


DDP_STEPS = """
import sys, torch, torch.distributed as dist
sys.path[:0] = {paths!r}
import conftest  # noqa: F401  (tests/mm on the path)
from test_mm_gpu_paths import _vim, _vssm
dist.init_process_group('gloo', init_method='file://{store}', rank=0, world_size=1)
models = dict(vssm_0_1_2=lambda: _vssm(out_indices=(0, 1, 2)), vssm_checkpointed=lambda: _vssm(use_checkpoint=True),
              vim_0_of_3_checkpointed=lambda: _vim(3, out_indices=[0], use_checkpoint=True))
for name, make in models.items():
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(make(), find_unused_parameters=False)
    for step in range(2):
        outs = model(torch.randn(2, 3, 64, 80))
        sum(o.sum() for o in (outs if isinstance(outs, list) else [outs])).backward()
    print(name, 'trained two DDP steps')
"""


def test_backbones_train_two_ddp_steps_without_find_unused_parameters(tmp_path):
    """The DDP that mmengine wraps the model in (find_unused_parameters=False), on gloo: a backbone without its last
    stage or layers (trainable, they stopped its second step with 'Expected to have finished reduction in the prior
    iteration'), and both backbones with gradient checkpointing (use_checkpoint=True), which recomputes each block in
    the backward."""
    code = DDP_STEPS.format(paths=[os.path.join(REPO, 'tests', 'mm'), REPO], store=tmp_path / 'store')
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ('vssm_0_1_2', 'vssm_checkpointed', 'vim_0_of_3_checkpointed'):
        assert f'{name} trained two DDP steps' in proc.stdout


def _vitdet_model():
    return ('mmdet', *tiny_vitdet_model_cfg(), det_batch)


def _fpn_model():
    return ('mmdet', *tiny_fpn_model_cfg(), det_batch)


def _upernet_vim_model():
    cfg = seg_config('upernet_local_vim-tiny_8xb2-160k_ade20k-512x512.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vim_backbone(model['backbone'], depth=4, out_indices=[0, 1, 2, 3], width=32)
    model['decode_head'].update(in_channels=[32] * 4, channels=32)
    model['auxiliary_head'].update(in_channels=32, channels=16)
    model['data_preprocessor']['size'] = IMAGE_HW
    return 'mmseg', cfg, model, seg_batch


def _upernet_vssm_model():
    cfg = seg_config('upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py')
    model = copy.deepcopy(cfg.model)
    model['backbone'] = tiny_vssm_backbone(model['backbone'], dims=16)
    model['decode_head'].update(in_channels=[16, 32, 64, 128], channels=32)
    model['auxiliary_head'].update(in_channels=64, channels=16)
    model['data_preprocessor']['size'] = IMAGE_HW
    return 'mmseg', cfg, model, seg_batch


MODELS = [_vitdet_model, _fpn_model, _upernet_vim_model, _upernet_vssm_model]
MODEL_IDS = ['vitdet_local_vim', 'fpn_local_vssm', 'upernet_local_vim', 'upernet_local_vssm_amp']


def _build(scope: str, model_cfg: dict) -> torch.nn.Module:
    from mmengine.registry import MODELS as ROOT, init_default_scope
    init_default_scope(scope)
    return ROOT.build(model_cfg)


@pytest.mark.parametrize('make', MODELS, ids=MODEL_IDS)
def test_each_config_trains_under_ddp_without_find_unused_parameters(make):
    """The whole detector / segmentor of each config (SyncBN kept: without a process group it normalises as BN does)
    gives every trainable parameter a gradient in one training step, as DDP with mmengine's and the configs'
    find_unused_parameters=False needs; and the configs leave that setting and the model wrapper to mmengine."""
    scope, cfg, model_cfg, batch = make()
    assert not cfg.get('find_unused_parameters', False) and cfg.get('model_wrapper_cfg') is None
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    torch.manual_seed(0)
    model = _build(scope, model_cfg)
    model.init_weights()
    if scope == 'mmseg':
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules())
    loss = loss_and_grads(model, batch())
    assert torch.isfinite(loss)
    assert _without_gradient(model) == []


@pytest.mark.parametrize('make', [_vitdet_model, _fpn_model], ids=['vitdet_local_vim', 'fpn_local_vssm'])
def test_a_detection_step_of_an_image_without_instances_leaves_no_parameter_without_gradient(make):
    """The LSJ pipeline's RandomCrop(allow_negative_crop=True) gives images without instances, and LocalVim-S trains
    one image per GPU: such a step still reaches every parameter (the mask head's loss on no positive box included),
    as DDP with find_unused_parameters=False needs."""
    from mmdet.testing import demo_mm_inputs
    scope, _, model_cfg, _ = make()
    torch.manual_seed(0)
    model = _build(scope, model_cfg)
    batch = demo_mm_inputs(batch_size=1, image_shapes=(3, *IMAGE_HW), num_items=[0], num_classes=80, with_mask=True)
    assert len(batch['data_samples'][0].gt_instances) == 0
    assert torch.isfinite(loss_and_grads(model, batch))
    assert _without_gradient(model) == []


# ---------------------------------------------------------------------------------------------------------------------
# AmpOptimWrapper as the GPU configs ask for it


@pytest.mark.parametrize('make, base_lr, base_wd', [(_fpn_model, 1e-4, 0.05), (_upernet_vssm_model, 6e-5, 0.01)],
                         ids=['fpn_local_vssm', 'upernet_local_vssm_small'])
def test_the_amp_configs_build_their_gpu_optim_wrapper(monkeypatch, make, base_lr, base_wd):
    """The AMP configs' optim_wrapper as a GPU run builds it (its keys all taken by AmpOptimWrapper): autocast in
    fp16 (no dtype: torch's CUDA default), a dynamic loss scale, and the Swin base's paramwise rule: no weight decay
    for every parameter whose name holds 'norm' (the backbone's block, stage, output and scan-attention norms
    included), the base lr for all."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_module
    from mmengine.optim import AmpOptimWrapper, build_optim_wrapper
    scope, cfg, model_cfg, _ = make()
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    monkeypatch.setattr(amp_module, 'is_cuda_available', lambda: True)     # its only check of the device
    model = _build(scope, model_cfg)
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    assert type(wrapper) is AmpOptimWrapper
    assert wrapper.cast_dtype is None and isinstance(wrapper.loss_scaler, torch.amp.GradScaler)
    assert wrapper._scale_update_param is None     # 'dynamic': the scaler's own growth and backoff
    group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    names = [name for name, _ in model.named_parameters()]
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        assert group['lr'] == pytest.approx(base_lr), name
        assert group['weight_decay'] == pytest.approx(0. if 'norm' in name else base_wd), name
    for name in ('backbone.layers.0.blocks.0.norm.weight', 'backbone.outnorm3.bias',
                 'backbone.layers.0.downsample.norm.weight', 'backbone.layers.0.blocks.0.op.out_norm.weight'):
        assert name in names and group_of[id(dict(model.named_parameters())[name])]['weight_decay'] == 0.


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision inside the backbones


def test_the_vssm_scan_computes_in_fp32_under_autocast(monkeypatch):
    """Under autocast (the AMP configs' AmpOptimWrapper on CUDA; bfloat16 on the CPU here) the projections and convs
    run in the low precision, but the selective scan gets its token rows and every parameter in fp32 and returns
    fp32; the maps stay within bfloat16's rounding of the fp32 forward."""
    from classification.models import multi_scan
    seen = []
    scan = multi_scan.multi_scan_attention_merge_fn

    def recording(*args, **kwargs):
        out = scan(*args, **kwargs)
        seen.append(([a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
                     + [w.dtype for w in kwargs['attention_weights']], out.dtype))
        return out

    monkeypatch.setattr(multi_scan, 'multi_scan_attention_merge_fn', recording)
    torch.manual_seed(0)
    backbone = _vssm()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        reference = backbone(x)
        seen.clear()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            maps = backbone(x)
    assert len(seen) == 4   # one block per stage
    for dtypes, out_dtype in seen:
        assert set(dtypes) == {torch.float32} and out_dtype == torch.float32
    for got, want in zip(maps, reference):
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.03 * want.abs().max()


# ---------------------------------------------------------------------------------------------------------------------
# The launcher on a GPU machine


def test_a_gpu_machine_runs_the_config_as_asked(monkeypatch):
    """With CUDA, the Runner gets the config unchanged: AmpOptimWrapper with its settings, SyncBN, no model wrapper
    (mmengine's MMDistributedDataParallel on the local GPU) and no process group started here (mmengine's launcher
    starts NCCL's)."""
    import torch.distributed as dist
    from classification.dense import launch
    cfg = seg_config('upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py')
    cfg.launcher = 'pytorch'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    machine = launch._for_this_machine(cfg)
    assert machine.to_dict() == cfg.to_dict()
    assert machine.optim_wrapper.type == 'AmpOptimWrapper' and machine.model.decode_head.norm_cfg.type == 'SyncBN'
    assert 'model_wrapper_cfg' not in machine and not dist.is_initialized()


@pytest.mark.parametrize('amp_settings', [dict(dtype='bfloat16'), dict(loss_scale=512., dtype='float16'),
                                          dict(loss_scale='dynamic', use_fsdp=False)],
                         ids=['bf16', 'static_fp16', 'fsdp_flag'])
def test_without_cuda_every_amp_setting_goes_with_the_amp_wrapper(monkeypatch, amp_settings):
    """A GPU config's AmpOptimWrapper with a dtype (bf16 AMP, say) runs on a CPU as a plain OptimWrapper: the dtype
    went with it, where it made OptimWrapper's constructor fail with a TypeError (reported as a misspelt key when it
    came from --cfg-options); the config itself keeps them."""
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    from classification.dense import launch
    cfg = seg_config('upernet_local_vssm_small_8xb2-160k_ade20k-512x512.py')
    cfg.launcher = 'none'
    cfg.optim_wrapper.update(amp_settings)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    machine = launch._for_this_machine(cfg)
    assert machine.optim_wrapper.type == 'OptimWrapper'
    assert not set(amp_settings) & set(machine.optim_wrapper)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and set(amp_settings) <= set(cfg.optim_wrapper)
    wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), copy.deepcopy(machine.optim_wrapper))
    assert type(wrapper) is OptimWrapper


# ---------------------------------------------------------------------------------------------------------------------
# The ViTDet configs' fp16 gradient compression


def _fake_ddp():
    """A DistributedDataParallel (mmengine's, the default wrapper) that records the comm hooks put on it."""
    from mmengine.model import MMDistributedDataParallel

    class Recording(MMDistributedDataParallel):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.hooks = []

        def register_comm_hook(self, state, hook):
            self.hooks.append((state, hook))

    return Recording()


class _FakeFSDP(torch.nn.Module):
    hooks = ()

    def register_comm_hook(self, state, hook):
        raise AssertionError('not a DDP model: no comm hook')


class _FakeRunner:
    def __init__(self, distributed: bool, cfg: dict, model: torch.nn.Module):
        from mmengine.config import Config
        from mmengine.logging import MMLogger
        self.distributed, self.cfg, self.model = distributed, Config(cfg), model
        self.logger = MMLogger.get_current_instance()


@pytest.mark.parametrize('distributed, cfg, wrapper, registered', [
    (True, {}, _fake_ddp, True),
    (False, {}, _fake_ddp, False),
    (True, {'model_wrapper_cfg': {'type': 'MMDistributedDataParallel', 'find_unused_parameters': True}}, _fake_ddp,
     True),
    (True, {'model_wrapper_cfg': {'type': 'MMFullyShardedDataParallel'}}, _FakeFSDP, False),
], ids=['ddp', 'one_process', 'ddp_of_a_model_wrapper_cfg', 'fsdp'])
def test_the_vitdet_fp16_compression_hook(distributed, cfg, wrapper, registered):
    """The ViTDet configs' custom hook (registered in mmdet's HOOKS under the name they give) puts DDP's fp16
    compression hook on the DistributedDataParallel model of a distributed run, also one a model_wrapper_cfg asks for
    (to set find_unused_parameters, say: the hook used to skip it, unlike the original), and leaves other runs
    alone."""
    from mmdet.registry import HOOKS
    from mmengine.registry import init_default_scope
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
    config = det_config('vitdet_cascade_mask-rcnn_local_vim_tiny_lsj-100e.py')
    init_default_scope(config.default_scope)
    hook = HOOKS.build(copy.deepcopy(config.custom_hooks[0]))
    runner = _FakeRunner(distributed, cfg, wrapper())
    hook.before_train(runner)
    assert list(runner.model.hooks) == ([(None, fp16_compress_hook)] if registered else [])
