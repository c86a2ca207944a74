"""The dense (det/seg) backbones of classification.dense without OpenMMLab: composed on the classification models'
public API with the original det/seg state_dict keys, safe pretrained loading, and no import of mm* or detection."""
import argparse
import copy
import os
import re
import subprocess
import sys

import pytest
import torch

from classification.common import CheckpointError, UnsafeCheckpointError
from classification.dense import MM_LocalVim, MM_LocalVSSM
from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS
from classification.models.local_vim import VisionMamba
from classification.models.local_vmamba import VSSM

VIM_ARGS = dict(img_size=64, embed_dim=32, depth=2, directions=LOCAL_VIM_TINY_DIRECTIONS[:2], rms_norm=False,
                if_rope=True, if_rope_residual=True)
VSSM_ARGS = dict(dims=16, depths=(1, 1, 1, 1), directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_importing_the_backbones_loads_no_openmmlab_package_and_no_plugin():
    code = ('import sys, classification.dense; '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg", '
            '"detection", "segmentation")]; assert not bad, bad')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_keys_and_parameter_names_are_the_original_backbones():
    torch.manual_seed(0)
    vim = MM_LocalVim(out_indices=[0, 1], **VIM_ARGS)
    classifier_keys = [k for k in VisionMamba(**VIM_ARGS).state_dict() if not k.startswith(('head.', 'norm_f.'))]
    assert list(vim.state_dict()) == classifier_keys + ['outnorm_0.weight', 'outnorm_0.bias', 'outnorm_1.weight',
                                                        'outnorm_1.bias']
    assert [n for n, _ in vim.named_parameters()] == [k for k in vim.state_dict() if 'rope.freqs' not in k]
    vssm = MM_LocalVSSM(out_indices=(3, 1), **VSSM_ARGS)
    classifier_keys = [k for k in VSSM(**VSSM_ARGS).state_dict() if not k.startswith('classifier.')]
    assert list(vssm.state_dict()) == classifier_keys + ['outnorm1.weight', 'outnorm1.bias', 'outnorm3.weight',
                                                         'outnorm3.bias']


def test_the_backbone_and_its_trunk_share_parameters_through_conversion_and_copies():
    torch.manual_seed(0)
    backbone = MM_LocalVim(out_indices=[1], **VIM_ARGS).double()
    assert backbone.trunk.pos_embed is backbone.pos_embed and backbone.trunk.layers is backbone.layers
    assert backbone.trunk.pos_embed.dtype == torch.float64
    clone = copy.deepcopy(backbone)
    with torch.no_grad():
        clone.pos_embed.zero_()
    assert clone.trunk.pos_embed is clone.pos_embed and bool(backbone.pos_embed.abs().sum() > 0)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.equal(clone(x), backbone(x))


@pytest.mark.parametrize('backbone, args, blocks', [
    (MM_LocalVim, dict(VIM_ARGS, out_indices=[0, 1]), lambda model: list(model.layers)),
    (MM_LocalVSSM, VSSM_ARGS, lambda model: [block for layer in model.layers for block in layer.blocks]),
])
def test_use_checkpoint_recomputes_each_block_in_the_backward_and_changes_no_value(backbone, args, blocks):
    """MM_LocalVim had no switch for gradient checkpointing (MM_LocalVSSM had VSSM's use_checkpoint): its features
    of large detection inputs kept every layer's activations."""
    torch.manual_seed(0)
    plain = backbone(**args).double()
    checkpointed = backbone(use_checkpoint=True, **args).double()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    outputs, grads, calls = [], [], []
    for model in (plain, checkpointed):
        count = [0]
        for block in blocks(model):
            block.register_forward_pre_hook(lambda *_, count=count: count.__setitem__(0, count[0] + 1))
        feats = model(x)
        sum(f.square().sum() for f in (feats if isinstance(feats, list) else [feats])).backward()
        outputs.append(feats)
        grads.append([p.grad for p in model.parameters()])
        calls.append(count[0])
    assert calls == [len(blocks(plain)), 2 * len(blocks(plain))]   # each block again in the backward
    for ours, theirs in zip(outputs[0], outputs[1]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)


def test_a_pretrained_file_that_needs_pickle_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / 'marker'
    crafted = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'payload': _Payload(str(marker))}, crafted)
    with pytest.raises(UnsafeCheckpointError, match='trust_checkpoint=True'):
        MM_LocalVSSM(pretrained=str(crafted), **VSSM_ARGS).init_weights()
    assert not marker.exists()

    torch.manual_seed(1)
    weights = VSSM(**VSSM_ARGS).state_dict()
    legacy = tmp_path / 'legacy.pth'
    torch.save({'state_dict': weights, 'args': argparse.Namespace(lr=0.1)}, legacy)
    with pytest.raises(UnsafeCheckpointError):
        MM_LocalVSSM(pretrained=str(legacy), **VSSM_ARGS).init_weights()
    trusted = MM_LocalVSSM(pretrained=str(legacy), trust_checkpoint=True, **VSSM_ARGS)
    trusted.init_weights()
    torch.testing.assert_close(trusted.state_dict()['patch_embed.0.weight'], weights['patch_embed.0.weight'])
    assert sorted(trusted.load_result.missing_keys) == sorted(f'outnorm{i}.{p}' for i in range(4)
                                                              for p in ('weight', 'bias'))


def test_each_direction_keeps_its_own_a_log_from_a_local_vim_checkpoint(tmp_path):
    """The original's det/seg backbone aliases the A_log_k of a layer, so loading leaves every direction with the last
    direction's values; here each keeps its own."""
    torch.manual_seed(0)
    classifier = VisionMamba(**VIM_ARGS)
    weights = classifier.state_dict()
    for k in range(4):
        weights[f'layers.0.mixer.A_log_{k}'] = torch.full_like(weights[f'layers.0.mixer.A_log_{k}'], float(k))
    path = tmp_path / 'local_vim.pth'
    torch.save({'state_dict': weights}, path)
    backbone = MM_LocalVim(out_indices=[1], pretrained_ckpt=str(path), **VIM_ARGS)
    backbone.init_weights()
    for k in range(4):
        assert torch.equal(getattr(backbone.layers[0].mixer, f'A_log_{k}'), torch.full((64, 16), float(k)))


def test_backbone_refuses_pretrained_weights_of_other_shapes_in_one_named_error(tmp_path):
    """A checkpoint of a wider model is a CheckpointError naming the tensors, not torch's long size-mismatch
    RuntimeError."""
    args = dict(depths=(1, 1, 1, 1), directions=LOCAL_VSSM_TINY_DIRECTIONS[:4])
    wide = MM_LocalVSSM(dims=32, **args)
    path = tmp_path / "wide.pth"
    torch.save({"state_dict": wide.state_dict()}, path)
    narrow = MM_LocalVSSM(dims=16, pretrained=str(path), **args)
    with pytest.raises(CheckpointError, match=r"tensors do not fit MM_LocalVSSM's shapes"):
        narrow.init_weights()


def _vim(depth):
    return MM_LocalVim(out_indices=[1], depth=depth, embed_dim=16, patch_size=16,
                       directions=LOCAL_VIM_TINY_DIRECTIONS[:depth])


def _vssm(depths):
    return MM_LocalVSSM(dims=8, depths=depths, directions=LOCAL_VSSM_TINY_DIRECTIONS[:sum(depths)])


@pytest.mark.parametrize('saved, backbone, theirs, ours', [
    (lambda: _vim(2), lambda: _vim(3), 'depth 2', 'depth 3'),
    (lambda: _vim(3), lambda: _vim(2), 'depth 3', 'depth 2'),
    (lambda: _vssm((1, 1, 1, 1)), lambda: _vssm((1, 1, 2, 1)), 'depths (1, 1, 1, 1)', 'depths (1, 1, 2, 1)'),
    (lambda: _vssm((1, 1, 2, 1)), lambda: _vssm((1, 1, 1, 1)), 'depths (1, 1, 2, 1)', 'depths (1, 1, 1, 1)'),
], ids=['vim_shallower', 'vim_deeper', 'vssm_shallower', 'vssm_deeper'])
def test_backbone_refuses_pretrained_weights_of_another_depth(tmp_path, saved, backbone, theirs, ours):
    """Weights of fewer layers left the backbone's others initialised, of more dropped theirs, each with a log line of
    keys only (and a warning of other scan directions): refused by name."""
    path = tmp_path / 'other_depth.pth'
    torch.save({'state_dict': saved().state_dict()}, path)
    model = backbone()
    with pytest.raises(CheckpointError, match=re.escape(f"{path} holds a model of {theirs}, {type(model).__name__} "
                                                        f"has {ours}: build the backbone as the checkpoint's model was "
                                                        f"built")):
        model.load_pretrained(str(path))


def test_mmengines_pretrained_init_cfg_loads_the_file_and_its_prefix_takes_a_det_checkpoints_backbone(tmp_path):
    """``init_cfg=dict(type='Pretrained', checkpoint=...)``, mmdet's way of naming a backbone's weights, loads them as
    ``pretrained=`` does; its ``prefix`` takes the backbone of a detector's checkpoint (keys ``backbone.*``)."""
    torch.manual_seed(0)
    weights = VSSM(**VSSM_ARGS).state_dict()
    path = tmp_path / 'local_vssm.pth'
    torch.save({'state_dict': weights}, path)
    backbone = MM_LocalVSSM(init_cfg=dict(type='Pretrained', checkpoint=str(path)), **VSSM_ARGS)
    backbone.init_weights()
    assert torch.equal(backbone.state_dict()['patch_embed.0.weight'], weights['patch_embed.0.weight'])
    assert backbone.pretrained_arg == 'init_cfg.checkpoint'

    torch.manual_seed(1)
    trained = MM_LocalVSSM(**VSSM_ARGS).state_dict()
    detector = tmp_path / 'mask_rcnn.pth'
    torch.save({'state_dict': {**{f'backbone.{k}': v for k, v in trained.items()},
                               'neck.conv.weight': torch.zeros(2)}}, detector)
    for prefix in ('backbone.', 'backbone'):   # mmengine puts the dot after a prefix without one
        init_cfg = dict(type='Pretrained', checkpoint=str(detector), prefix=prefix, map_location='cpu')
        from_detector = MM_LocalVSSM(init_cfg=init_cfg, **VSSM_ARGS)
        from_detector.init_weights()
        assert from_detector.load_result.missing_keys == [] and from_detector.load_result.unexpected_keys == []
        for key, value in trained.items():
            assert torch.equal(from_detector.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="none of its tensors is under the init_cfg prefix 'model.'"):
        MM_LocalVSSM(init_cfg={**init_cfg, 'prefix': 'model'}, **VSSM_ARGS).init_weights()
    # as the messages advise: its checkpoint set to None starts from the model's own initialisation
    unloaded = MM_LocalVSSM(init_cfg=dict(type='Pretrained', checkpoint=None), **VSSM_ARGS)
    assert unloaded.pretrained is None


@pytest.mark.parametrize('init_cfg, pretrained', [
    (dict(type='Kaiming', layer='Conv2d'), None),
    (dict(type='Pretrained'), None),
    (dict(type='Pretrained', checkpoint='a.pth', revise_keys=[]), None),
    ([dict(type='Pretrained', checkpoint='a.pth')], None),
    (dict(type='Pretrained', checkpoint='a.pth'), 'b.pth'),
])
def test_an_init_cfg_the_backbone_does_not_take_is_refused_by_name(init_cfg, pretrained):
    with pytest.raises(ValueError) as err:
        MM_LocalVim(init_cfg=init_cfg, pretrained=pretrained, **VIM_ARGS)
    if pretrained:
        assert str(err.value) == ("MM_LocalVim: pass one of pretrained='b.pth' and init_cfg.checkpoint='a.pth' (set "
                                  "the other to None)")
    else:
        assert str(err.value).startswith(f"MM_LocalVim: init_cfg={init_cfg!r}: the backbone starts from its "
                                         f"classification model's initialisation, and the one init_cfg it takes is "
                                         f"dict(type='Pretrained', checkpoint=FILE)")


@pytest.mark.parametrize('backbone, settings, message', [
    (MM_LocalVim, dict(drop_path_rat=0.1), "MM_LocalVim does not take 'drop_path_rat'; did you mean drop_path_rate, "
                                           "drop_rate?"),
    (MM_LocalVSSM, dict(depth=[2, 2, 9, 2]), "MM_LocalVSSM does not take 'depth'; did you mean depths?"),
    (MM_LocalVSSM, dict(norm_cfg=dict(type='SyncBN')), "MM_LocalVSSM does not take 'norm_cfg'; did you mean "
                                                       "init_cfg?"),
    (MM_LocalVim, dict(frozen_stages=1), "MM_LocalVim does not take 'frozen_stages'"),
])
def test_a_setting_neither_the_backbone_nor_its_model_takes_is_refused_by_name(backbone, settings, message):
    """A misspelt key of a config's model.backbone was a TypeError traceback from inside the classification model
    (mmdet's norm_cfg and frozen_stages, which these backbones do not take, too)."""
    from classification.dense.backbones import BackboneSettingError

    with pytest.raises(BackboneSettingError) as err:
        backbone(directions=[['h']], **settings)
    assert str(err.value) == message


def test_a_det_checkpoint_given_as_pretrained_is_named_with_the_prefix_that_takes_its_backbone(tmp_path):
    """A detector's checkpoint (backbone.* keys) given as pretrained= was called 'another model family' (and a LocalVim
    one 'a model with no class token')."""
    torch.manual_seed(0)
    cases = [(MM_LocalVSSM, VSSM_ARGS),
             (MM_LocalVim, dict(VIM_ARGS, out_indices=[1], if_cls_token=True, use_middle_cls_token=True,
                                if_rope=False, if_rope_residual=False))]
    for backbone_class, args in cases:
        trained = backbone_class(**args).state_dict()
        path = tmp_path / f'{backbone_class.__name__}_det.pth'
        torch.save({'state_dict': {'neck.conv.weight': torch.zeros(2),
                                   **{f'backbone.{k}': v for k, v in trained.items()}}}, path)
        with pytest.raises(CheckpointError) as err:
            backbone_class(pretrained=str(path), **args).init_weights()
        assert str(err.value).endswith(
            f"belongs to {backbone_class.__name__}: its tensors under 'backbone.' are {backbone_class.__name__}'s: "
            f"take them with init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')")


def _layer_norm_1e5(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels (dim 1) of an NCHW map, written out, with nn.LayerNorm's default eps 1e-5 (the
    original's outnorm layers)."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight[:, None, None] + bias[:, None, None]


def test_each_output_is_its_layer_or_stage_layer_normed_with_the_originals_eps_and_affine():
    """Every output is its layer's (LocalVim) or stage's (LocalVMamba) map, normalised over the channels with eps 1e-5
    and that output's own weight and bias (float64, where another eps such as 1e-6 moves the values by ~1e-6)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    cases = ((MM_LocalVim(out_indices=[0, 1], **VIM_ARGS), [0, 1], lambda i, j: f'outnorm_{j}'),
             (MM_LocalVSSM(out_indices=(1, 3), **VSSM_ARGS), [1, 3], lambda i, j: f'outnorm{i}'))
    for backbone, indices, norm_name in cases:
        backbone = backbone.double().eval()
        for i, j in zip(indices, range(len(indices))):
            norm = getattr(backbone, norm_name(i, j))
            torch.nn.init.normal_(norm.weight)
            torch.nn.init.normal_(norm.bias)
        with torch.no_grad():
            outs = backbone(x)
            maps = backbone.trunk.forward_intermediates(x, indices, output_fmt='NCHW', intermediates_only=True)
        assert len(outs) == len(indices)
        for i, j, out, feature in zip(indices, range(len(indices)), outs, maps):
            norm = getattr(backbone, norm_name(i, j))
            assert out.shape == feature.shape
            torch.testing.assert_close(out, _layer_norm_1e5(feature, norm.weight, norm.bias), rtol=1e-9, atol=1e-9)


def test_a_pretrained_url_goes_to_the_loader_and_only_a_missing_local_file_is_refused(tmp_path, monkeypatch):
    """The original LocalVim seg configs name their weights by an https URL (read by torch.hub, no file here): it must
    reach the loader, not be refused as a missing file."""
    from classification.dense import backbones
    url = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt'
    assert backbones.missing_pretrained_message('MM_LocalVim', url, 'model.backbone.pretrained_ckpt') is None
    missing = str(tmp_path / 'none.pth')
    assert backbones.missing_pretrained_message('MM_LocalVim', missing, 'model.backbone.pretrained_ckpt') == (
        f'MM_LocalVim: pretrained checkpoint not found: {missing} (set model.backbone.pretrained_ckpt to your file, '
        f'or to None to start from random weights)')
    torch.manual_seed(0)
    weights = MM_LocalVim(out_indices=[1], **VIM_ARGS).state_dict()
    read = []
    monkeypatch.setattr(backbones, 'load_checkpoint_on_all_ranks',
                        lambda path, trust=False: read.append(path) or {'state_dict': weights})
    backbone = MM_LocalVim(out_indices=[1], pretrained_ckpt=url, **VIM_ARGS)
    backbone.init_weights()
    assert read == [url]
    assert torch.equal(backbone.state_dict()['layers.1.mixer.in_proj.weight'], weights['layers.1.mixer.in_proj.weight'])


RELEASE_URL = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'


def _pretrained_url_worker(rank: int, init_file: str, out_dir: str, source: str) -> None:
    """One of two gloo processes of one node building a backbone whose pretrained= is a URL, with torch.hub's download
    faked (a copy of ``source``, counted): rank 0's download goes on only once rank 1 waits at a barrier or downloads
    too, so that no race decides the count."""
    import shutil

    import torch.distributed as dist

    os.environ.update(LOCAL_RANK=str(rank), TORCH_HOME=os.path.join(out_dir, 'torch_home'))
    handshake = dist.FileStore(os.path.join(out_dir, 'handshake'), 2)
    downloads = []

    def download(url, dst, hash_prefix=None, progress=True):
        downloads.append(url)
        if rank == 0:
            handshake.get('rank 1')
        else:
            handshake.set('rank 1', 'downloads')
        shutil.copyfile(source, f'{dst}.{rank}.partial')
        os.replace(f'{dst}.{rank}.partial', dst)

    barrier = dist.barrier

    def waiting_barrier(*args, **kwargs):
        if rank == 1:
            handshake.set('rank 1', 'waits')
        return barrier(*args, **kwargs)

    torch.hub.download_url_to_file = download
    dist.barrier = waiting_barrier
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        backbone = MM_LocalVSSM(pretrained=RELEASE_URL, **VSSM_ARGS)
        backbone.init_weights()
    finally:
        dist.destroy_process_group()
    torch.save({'downloads': downloads, 'state_dict': backbone.state_dict()}, os.path.join(out_dir, f'{rank}.pt'))


def test_two_processes_of_a_node_download_a_pretrained_url_once_and_load_the_same_weights(tmp_path):
    """Every process downloaded the backbone's pretrained URL itself (8 downloads of one file on an 8-GPU node): the
    node's local rank 0 downloads it while the others wait at a barrier, then they read torch.hub's cached copy."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    weights = MM_LocalVSSM(**VSSM_ARGS).state_dict()
    source = tmp_path / 'local_vssm_tiny.ckpt'
    torch.save({'state_dict': weights}, source)
    mp.spawn(_pretrained_url_worker, args=(str(tmp_path / 'init'), str(tmp_path), str(source)), nprocs=2)
    results = [torch.load(tmp_path / f'{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert [result['downloads'] for result in results] == [[RELEASE_URL], []]
    for result in results:
        assert list(result['state_dict']) == list(weights)
        assert all(torch.equal(result['state_dict'][key], value) for key, value in weights.items())


def test_a_failed_download_on_local_rank_0_releases_the_other_ranks_and_stops_it_in_one_named_error(monkeypatch):
    """Local rank 0 reaches the barrier the other ranks wait at even when its download fails (they then try it
    themselves), and stops with the download's error."""
    import urllib.error

    import torch.distributed as dist

    events = []

    def offline(*args, **kwargs):
        events.append('download')
        raise urllib.error.URLError('[Errno -2] Name or service not known')

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: 2)
    monkeypatch.setattr(dist, 'get_rank', lambda group=None: 0)
    monkeypatch.setattr(dist, 'barrier', lambda *args, **kwargs: events.append('barrier'))
    monkeypatch.setenv('LOCAL_RANK', '0')
    backbone = MM_LocalVSSM(pretrained=RELEASE_URL, **VSSM_ARGS)
    with pytest.raises(CheckpointError) as error:
        backbone.init_weights()
    assert str(error.value) == (f'cannot download checkpoint {RELEASE_URL}: URLError: <urlopen error [Errno -2] Name '
                                f'or service not known> (no network here? download it and give the local file)')
    assert events == ['download', 'barrier']


@pytest.mark.parametrize('rank, events', [(0, ['read', 'barrier']), (1, ['barrier', 'read'])])
def test_without_local_rank_only_the_first_process_downloads_a_url_first(monkeypatch, rank, events):
    """A process group started without LOCAL_RANK (not by torchrun or mmengine's launchers, e.g. a script of its own
    around a backbone): the global rank 0 downloads the URL while the others wait at the barrier, as on one node,
    rather than every process downloading it at once."""
    import torch.distributed as dist

    from classification.common import load_checkpoint_on_all_ranks

    happened = []
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url',
                        lambda url, **kwargs: happened.append('read') or {'state_dict': {'w': torch.ones(1)}})
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: 2)
    monkeypatch.setattr(dist, 'get_rank', lambda group=None: rank)
    monkeypatch.setattr(dist, 'barrier', lambda *args, **kwargs: happened.append('barrier'))
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    loaded = load_checkpoint_on_all_ranks(RELEASE_URL)
    assert happened == events and torch.equal(loaded['state_dict']['w'], torch.ones(1))


def test_a_224_checkpoints_pos_embed_is_resized_to_a_non_square_backbone_grid(tmp_path):
    """A 14x14 checkpoint for a backbone built at 64x96 (a 4x6 grid; RoPE needs a square one, so without it): its
    pos_embed is the checkpoint's resized rows to 4 and columns to 6, not to the transposed grid."""
    from classification.models.rope import resize_grid_table
    args = dict(VIM_ARGS, if_rope=False, if_rope_residual=False)
    torch.manual_seed(0)
    weights = VisionMamba(**dict(args, img_size=224)).state_dict()
    path = tmp_path / 'local_vim_224.pth'
    torch.save({'state_dict': weights}, path)
    backbone = MM_LocalVim(out_indices=[1], pretrained_ckpt=str(path), **dict(args, img_size=(64, 96)))
    backbone.init_weights()
    own = backbone.pos_embed.detach()
    assert own.shape == (1, 24, 32)
    torch.testing.assert_close(own, resize_grid_table(weights['pos_embed'], (14, 14), (4, 6)))
    transposed = resize_grid_table(weights['pos_embed'], (14, 14), (6, 4))
    assert not torch.allclose(own, transposed)
