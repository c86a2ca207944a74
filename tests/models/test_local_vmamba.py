"""LocalVMamba: faithful keys and parameter counts, the model's math against a per-direction composition of reference
ops on non-square inputs, intermediates for det/seg, initialisation, FLOPs and bad input."""
import copy
import math
import os
import pickle
import socket
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

import classification  # noqa: F401  (registers the models)
from classification.models.directions import CANDIDATES, LOCAL_VSSM_SMALL_DIRECTIONS, LOCAL_VSSM_TINY_DIRECTIONS
from classification.models.flop_count import flop_analysis
from classification.models.local_vmamba import SS2D
from classification.models.multi_scan import scan_all_directions
from localmamba_ssm import selective_scan_ref
from scan_reference import reverse, scan

# name -> (parameter count at 224 from the original's arithmetic, dims, depths, search)
FINAL, SUPERNET = (96, 192, 384, 768), (32, 64, 128, 256)
FACTS = {
    'local_vssm_tiny': (25_527_160, FINAL, (2, 2, 9, 2), False),
    'local_vssm_small': (49_748_536, FINAL, (2, 2, 27, 2), False),
    'local_vssm_tiny_search': (4_576_656, SUPERNET, (2, 2, 9, 2), True),
    'local_vssm_small_search': (9_148_512, SUPERNET, (2, 2, 27, 2), True),
}


def expected_keys(dims, depths, search, classes=1000):
    """The original state_dict (facts §2.2), in its order: ordered keys and shapes."""
    num_dirs = 8 if search else 4
    keys = [('patch_embed.0.weight', (dims[0], 3, 4, 4)), ('patch_embed.0.bias', (dims[0],)),
            ('patch_embed.2.weight', (dims[0],)), ('patch_embed.2.bias', (dims[0],))]
    for s, depth in enumerate(depths):
        d = dims[s]
        inner, rank = 2 * d, math.ceil(d / 16)
        for j in range(depth):
            p = f'layers.{s}.blocks.{j}.'
            keys += [(f'{p}norm.weight', (d,)), (f'{p}norm.bias', (d,)),
                     (f'{p}op.x_proj_weight', (num_dirs, rank + 32, inner)),
                     (f'{p}op.dt_projs_weight', (num_dirs, inner, rank)), (f'{p}op.dt_projs_bias', (num_dirs, inner)),
                     (f'{p}op.A_logs', (num_dirs * inner, 16)), (f'{p}op.Ds', (num_dirs * inner,)),
                     (f'{p}op.out_norm.weight', (inner,)), (f'{p}op.out_norm.bias', (inner,)),
                     (f'{p}op.in_proj.weight', (2 * inner, d)),
                     (f'{p}op.conv2d.weight', (inner, 1, 3, 3)), (f'{p}op.conv2d.bias', (inner,)),
                     (f'{p}op.out_proj.weight', (d, inner))]
            if search:
                keys.append((f'{p}op.multi_scan.weights', (8, 1, 1, 1)))
            a = f'{p}op.multi_scan.attn.'
            keys += [(f'{a}norm.weight', (inner,)), (f'{a}norm.bias', (inner,)),
                     (f'{a}global_reduce.weight', (inner // 8, inner)), (f'{a}global_reduce.bias', (inner // 8,)),
                     (f'{a}channel_select.weight', (inner, inner // 8)), (f'{a}channel_select.bias', (inner,))]
        if s < len(depths) - 1:
            keys += [(f'layers.{s}.downsample.reduction.weight', (dims[s + 1], 4 * d)),
                     (f'layers.{s}.downsample.norm.weight', (4 * d,)), (f'layers.{s}.downsample.norm.bias', (4 * d,))]
    keys += [('classifier.norm.weight', (dims[-1],)), ('classifier.norm.bias', (dims[-1],)),
             ('classifier.head.weight', (classes, dims[-1])), ('classifier.head.bias', (classes,))]
    return keys


@pytest.mark.parametrize('name', sorted(FACTS))
def test_keys_shapes_and_parameter_count_at_224(name):
    count, dims, depths, search = FACTS[name]
    model = timm.create_model(name)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected_keys(dims, depths, search)
    assert sum(p.numel() for p in model.parameters()) == count


def block_directions(model):
    return tuple(block.op.directions for stage in model.layers for block in stage.blocks)


def test_directions_and_defaults_of_registered_models():
    tiny = timm.create_model('local_vssm_tiny', dims=8)
    assert block_directions(tiny) == LOCAL_VSSM_TINY_DIRECTIONS and tiny.directions == LOCAL_VSSM_TINY_DIRECTIONS
    assert block_directions(timm.create_model('local_vssm_small', dims=8)) == LOCAL_VSSM_SMALL_DIRECTIONS
    for name in ('local_vssm_tiny_search', 'local_vssm_small_search'):
        search = timm.create_model(name, dims=8)
        assert search.directions is None and set(block_directions(search)) == {CANDIDATES}
        assert search.dims == [8, 16, 32, 64]
    assert timm.create_model('local_vssm_tiny_search').dims == list(SUPERNET)


@pytest.mark.parametrize('name,rate', [('local_vssm_tiny', 0.2), ('local_vssm_small', 0.2),
                                       ('local_vssm_tiny_search', 0.1), ('local_vssm_small_search', 0.1)])
def test_drop_path_schedule_and_honoured_kwargs(name, rate):
    model = timm.create_model(name, dims=8)
    rates = [getattr(block.drop_path, 'drop_prob', 0.0) for stage in model.layers for block in stage.blocks]
    assert rates == pytest.approx(torch.linspace(0, rate, len(rates)).tolist())
    custom = timm.create_model(name, dims=8, num_classes=7, drop_path_rate=0.3)
    assert custom.classifier.head.out_features == 7
    assert custom.layers[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)


def ss2d_by_reference(op, x):
    """The original SS2D forward, one direction at a time, with the sequential reference scan (facts §3.6)."""
    batch, height, width, _ = x.shape
    grid, inner, rank, state = (height, width), op.d_inner, op.dt_rank, op.d_state
    xz = F.linear(x, op.in_proj.weight)
    u, z = xz[..., :inner], xz[..., inner:]
    u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), op.conv2d.weight, op.conv2d.bias, padding=1, groups=inner))
    outputs = []
    for k, name in enumerate(op.directions):
        seq = scan(u, name, grid)                                                       # (B, E, L_k)
        x_dbl = torch.einsum('bel,ce->bcl', seq, op.x_proj_weight[k])
        delta = torch.einsum('brl,er->bel', x_dbl[:, :rank], op.dt_projs_weight[k])
        y = selective_scan_ref(seq, delta, -torch.exp(op.A_logs[k * inner:(k + 1) * inner]),
                               x_dbl[:, rank:rank + state], x_dbl[:, rank + state:],
                               D=op.Ds[k * inner:(k + 1) * inner], delta_bias=op.dt_projs_bias[k],
                               delta_softplus=True)
        outputs.append(op.multi_scan.attn(reverse(y, name, grid).transpose(1, 2)))     # (B, H*W, E)
    if op.multi_scan.search:
        probs = torch.softmax(op.multi_scan.weights.view(-1), 0)
        merged = sum(p * F.layer_norm(a, a.shape[-1:]) for p, a in zip(probs, outputs))
    else:
        merged = sum(outputs)
    y = F.layer_norm(merged, (inner,), op.out_norm.weight, op.out_norm.bias).view(batch, height, width, inner)
    return F.linear(y * F.silu(z), op.out_proj.weight)


def merge_by_reference(merge, x):
    """PatchMerging2D: zero-pad odd sides, concatenate the 2x2 neighbours, LayerNorm, linear."""
    x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    return F.linear(F.layer_norm(x, x.shape[-1:], merge.norm.weight, merge.norm.bias), merge.reduction.weight)


def model_by_reference(model, image):
    """Patch embedding, blocks, merges and classifier of the original VSSM, built from the reference ops above."""
    conv, _, norm = model.patch_embed
    x = F.conv2d(image, conv.weight, conv.bias, stride=4).permute(0, 2, 3, 1)
    x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias)
    for i, stage in enumerate(model.layers):
        for block in stage.blocks:
            x = x + ss2d_by_reference(block.op, F.layer_norm(x, x.shape[-1:], block.norm.weight, block.norm.bias))
        if i < len(model.layers) - 1:
            x = merge_by_reference(stage.downsample, x)
    x = F.layer_norm(x, x.shape[-1:], model.classifier.norm.weight, model.classifier.norm.bias)
    return F.linear(x.mean(dim=(1, 2)), model.classifier.head.weight, model.classifier.head.bias)


def perturbed(module):
    """Move every parameter off its init (LayerNorms 1/0, zero biases) so that each one matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.mark.parametrize('directions,grid', [
    (('h', 'v_flip', 'w2', 'w7_flip'), (5, 7)),             # non-square; w2 and w7 pad, lengths 48 / 49 / 35
    (('v', 'h_flip', 'w3', 'w2_flip'), (6, 4)),
    (None, (3, 5)),                                          # search block: all 8 candidates, softmax merge
])
def test_ss2d_equals_per_direction_reference(directions, grid):
    torch.manual_seed(0)
    op = perturbed(SS2D(8, directions, d_state=5))
    x = torch.randn(2, *grid, 8)
    torch.testing.assert_close(op(x), ss2d_by_reference(op, x), rtol=1e-4, atol=1e-5)


class Tripled(torch.nn.Module):
    """A deterministic stand-in for DropPath."""

    def forward(self, x):
        return 3.0 * x


def test_drop_path_wraps_the_mixer_output_not_the_residual():
    """VSSBlock is ``x + DropPath(SS2D(LayerNorm(x)))`` (facts 3.6): DropPath replaced by a scaling by 3, the block
    gives x + 3 * op(norm(x)). A block that dropped the residual instead (``DropPath(x) + op``) is the same in eval
    mode, where DropPath is the identity, so it passed every reference test and trained without stochastic depth."""
    from classification.models.local_vmamba import VSSBlock

    torch.manual_seed(0)
    block = perturbed(VSSBlock(8, ('h', 'w2'), drop_path=0.1, d_state=4)).eval()
    block.drop_path = torch.nn.Identity()
    x = torch.randn(2, 4, 4, 8)
    with torch.no_grad():
        branch = block(x) - x                                       # op(norm(x))
        block.drop_path = Tripled()
        torch.testing.assert_close(block(x), x + 3.0 * branch)


SMALL_TABLE = [['h', 'v_flip', 'w7'], ['w2_flip', 'v'], ['h_flip', 'w2', 'w7_flip', 'v'], ['w3', 'h'], ['w2', 'v_flip']]


@pytest.mark.parametrize('size', [(96, 160), (92, 156)])     # grids 24x40 .. 3x5; the second merges odd maps
def test_model_equals_reference_composition_on_non_square_input(size):
    torch.manual_seed(0)
    model = perturbed(timm.create_model('local_vssm_tiny', dims=4, depths=(1, 1, 2, 1), directions=SMALL_TABLE,
                                        num_classes=5)).eval()
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model_by_reference(model, image), rtol=1e-4, atol=1e-5)


def test_search_model_equals_reference_composition():
    torch.manual_seed(0)
    model = perturbed(timm.create_model('local_vssm_tiny_search', dims=4, depths=(1, 1, 1, 1), num_classes=3)).eval()
    image = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(model(image), model_by_reference(model, image), rtol=1e-4, atol=1e-5)


def test_intermediates_are_stage_outputs_before_downsampling():
    torch.manual_seed(0)
    model = timm.create_model('local_vssm_tiny', dims=8, num_classes=0).eval()
    image = torch.randn(2, 3, 64, 96)
    final, feats = model.forward_intermediates(image)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6), (2, 64, 2, 3)]
    x = model.patch_embed(image)
    for stage, feat in zip(model.layers, feats):
        x = stage.blocks(x)
        torch.testing.assert_close(feat, x.permute(0, 3, 1, 2))
        x = stage.downsample(x)
    torch.testing.assert_close(final, model.forward_features(image))
    only = model.forward_intermediates(image, indices=[1, 3], norm=True, output_fmt='NHWC', intermediates_only=True)
    torch.testing.assert_close(only[0], feats[1].permute(0, 2, 3, 1))
    torch.testing.assert_close(only[1], model.classifier.norm(feats[3].permute(0, 2, 3, 1)))
    # the module whose output is the feature (the stage's blocks, before the downsampling), for FX extraction
    assert model.feature_info == [dict(num_chs=8 * 2 ** i, reduction=4 * 2 ** i, module=f'layers.{i}.blocks')
                                  for i in range(4)]


def test_the_final_norm_applies_only_where_the_last_stage_ran():
    """Stopping early at stage 1, or a model pruned to two stages with norm kept (timm's feature getter with
    norm=True), must not run the final norm (sized for stage 3) on a stage-1 or stage-2 map: it raised a shape error."""
    from timm.models._features import FeatureGetterNet

    torch.manual_seed(0)
    model = timm.create_model('local_vssm_tiny', dims=8, num_classes=0).eval()
    image = torch.randn(1, 3, 64, 64)
    _, feats = model.forward_intermediates(image)
    final, early = model.forward_intermediates(image, indices=[1], norm=True, stop_early=True)
    torch.testing.assert_close(early[0], feats[1])
    # stage 1's own map (channel-last, not yet downsampled for stage 2), unnormalised: the final norm is stage 3's
    torch.testing.assert_close(final, feats[1].permute(0, 2, 3, 1))
    getter = FeatureGetterNet(model, out_indices=(0, 1), norm=True).eval()
    for got, expected in zip(getter(image), feats[:2]):
        torch.testing.assert_close(got, expected)
    assert isinstance(model.classifier.norm, torch.nn.Identity)


def test_features_only_backbone():
    model = timm.create_model('local_vssm_small', dims=8, depths=(1, 1, 1, 1),
                              directions=[['h', 'w7']] * 4, features_only=True, out_indices=(1, 2))
    assert model.feature_info.channels() == [16, 32] and model.feature_info.reduction() == [8, 16]
    feats = model(torch.randn(1, 3, 100, 60))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 13, 8), (1, 32, 7, 4)]
    full = timm.create_model('local_vssm_tiny', features_only=True)
    assert full.feature_info.channels() == [96, 192, 384, 768] and full.feature_info.reduction() == [4, 8, 16, 32]
    three = timm.create_model('local_vssm_tiny_search', dims=(8, 16, 32), depths=(1, 1, 1), features_only=True)
    assert [tuple(f.shape) for f in three(torch.randn(1, 3, 32, 32))] == [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2)]


@pytest.mark.parametrize('supernet, final', [
    ('local_vssm_tiny_search', 'local_vssm_tiny'),
    ('local_vssm_small_search', 'local_vssm_small'),
    ('local_vim_tiny_search', 'local_vim_tiny'),
])
def test_search_supernets_refuse_directions(supernet, final):
    """A supernet given directions would build a fixed-direction model at the supernet's width under its name."""
    directions = [['h', 'w7']] * 4
    with pytest.raises(ValueError, match=f'{supernet} is a search supernet .* train searched directions with {final}'):
        timm.create_model(supernet, directions=directions)


def test_initialisation_follows_the_original():
    torch.manual_seed(0)
    model = timm.create_model('local_vssm_tiny', dims=(32, 64, 128, 256))
    op = model.layers[2].blocks[3].op                    # d = 128, E = 256, R = 8
    assert torch.equal(op.A_logs[700], torch.log(torch.arange(1., 17.)))
    assert torch.equal(op.Ds, torch.ones(4 * 256))
    assert op.opt_in_no_weight_decay == ('A_logs', 'Ds') and model.no_weight_decay() == set()
    dt = F.softplus(op.dt_projs_bias)                    # Mamba's dt ~ log-uniform in [1e-3, 0.1], kept
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.std() > 0
    assert op.dt_projs_weight.abs().max() <= 8 ** -0.5 and op.dt_projs_weight.abs().max() > 0.9 * 8 ** -0.5
    assert op.x_proj_weight.abs().max() <= 256 ** -0.5 and op.x_proj_weight.abs().max() > 0.9 * 256 ** -0.5
    assert op.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not op.multi_scan.attn.global_reduce.bias.any()
    assert torch.equal(op.out_norm.weight, torch.ones(256)) and not op.out_norm.bias.any()


def test_gradients_keep_their_parameters_strides():
    """SS2D's depthwise conv runs on a channels-last view, whose weight gradient torch lays out with stride 1 on the
    weight's size-1 dimension; DDP compares strides one by one and warned 'Grad strides do not match bucket view
    strides'."""
    model = timm.create_model('local_vssm_tiny', dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_classes=3,
                              directions=[['h', 'v_flip', 'w2']] * 4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    conv = model.layers[0].blocks[0].op.conv2d.weight
    assert conv.stride() == (9, 9, 3, 1) and conv.grad.stride() == (9, 9, 3, 1)
    for name, param in model.named_parameters():
        assert param.grad.stride() == param.stride(), name


_STRIDES_MODEL = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_classes=3,
                      directions=[['h', 'v_flip', 'w2']] * 4)


def _meta_built_then_allocated(model):
    empty = timm.create_model('local_vssm_tiny', **_STRIDES_MODEL, device='meta').to_empty(device='cpu')
    empty.load_state_dict(model.state_dict())
    return empty


def _meta_built_then_allocated_and_filled_in_place(model):
    empty = timm.create_model('local_vssm_tiny', **_STRIDES_MODEL, device='meta').to_empty(device='cpu')
    with torch.no_grad():                         # no load_state_dict, whose hook would hook them too
        for own, values in zip(empty.state_dict(keep_vars=True).values(), model.state_dict().values()):
            own.copy_(values)
    return empty


def _loaded_by_assignment(model):
    fresh = timm.create_model('local_vssm_tiny', **_STRIDES_MODEL)
    fresh.load_state_dict(model.state_dict(), assign=True)
    return fresh


@pytest.mark.parametrize('copied', [copy.deepcopy, lambda model: pickle.loads(pickle.dumps(model)),
                                    _meta_built_then_allocated, _meta_built_then_allocated_and_filled_in_place,
                                    _loaded_by_assignment],
                         ids=['deepcopy', 'pickle', 'to_empty', 'to_empty_filled', 'assign'])
def test_gradients_keep_their_parameters_strides_in_a_copy_of_the_model(copied):
    """torch gives a deep copy, an unpickled model (``torch.save`` of the model), one moved off the 'meta' device with
    ``to_empty`` and one loaded with ``assign=True`` new parameters without hooks: their conv weights' gradients came
    back in the channels-last strides that DDP warns of."""
    model = copied(timm.create_model('local_vssm_tiny', **_STRIDES_MODEL))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad.stride() == param.stride(), name
        assert len(param._backward_hooks or {}) == (1 in param.shape), name


def test_ddp_training_gives_no_gradient_layout_warning(tmp_path):
    """One gloo process is enough: DDP's reducer checks each gradient against its bucket from the second backward
    on (a warning once per process, hence a process of its own)."""
    script = tmp_path / 'ddp.py'
    script.write_text(
        "import os, timm, torch, torch.distributed as dist\n"
        "import classification\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ['PORT'])\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        "model = timm.create_model('local_vssm_tiny', dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_classes=3,\n"
        "                          directions=[['h', 'v_flip', 'w2']] * 4)\n"
        "ddp = torch.nn.parallel.DistributedDataParallel(model)\n"
        "for _ in range(2):\n"
        "    model.zero_grad()\n"
        "    ddp(torch.randn(2, 3, 32, 32)).sum().backward()\n"
        "print(float(model.layers[0].blocks[0].op.conv2d.weight.grad.abs().sum()) > 0)\n"
        "dist.destroy_process_group()\n")
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PORT': str(port), 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0 and proc.stdout.strip() == 'True', proc.stderr[-3000:]
    assert 'Grad strides' not in proc.stderr, proc.stderr[-3000:]


def test_bf16_autocast_runs_the_scan_in_fp32(monkeypatch):
    """Under bf16 autocast the convolution's bf16 output is cast to the fp32 weights' dtype before the scan (the
    original's scan runs in fp32 under AMP, facts §3.6): every block's scan receives fp32 token rows and fp32
    parameters and returns fp32.
    The logits stay within bf16 rounding of the fp32 model's: at most 1.6e-3 apart on logits of about 0.1-0.17 over
    5 seeds (measured), so 5e-3 bounds them; a bf16 scan is no further off on logits, which is why the scan's dtypes
    are checked where the scan is called."""
    import classification.models.local_vmamba as local_vmamba
    seen = []

    def recording_scan(tokens, index, *params, **kwargs):
        out = scan_all_directions(tokens, index, *params, **kwargs)
        seen.append((tokens.dtype, {p.dtype for p in params if isinstance(p, torch.Tensor)}, out.dtype))
        return out

    torch.manual_seed(0)
    model = timm.create_model('local_vssm_tiny', dims=8, depths=(1, 1, 1, 1), directions=[['h', 'w2']] * 4,
                              num_classes=3).eval()
    image = torch.randn(2, 3, 64, 64)
    monkeypatch.setattr(local_vmamba, 'scan_all_directions', recording_scan)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(image)
    assert seen == [(torch.float32, {torch.float32}, torch.float32)] * 4
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(image), rtol=0, atol=5e-3)


@pytest.mark.parametrize('name,flops', [('local_vssm_tiny', 5_728_681_208), ('local_vssm_small', 11_372_957_664)])
def test_flops_in_the_original_fvcore_convention(name, flops):
    """The figures the original ``VSSM.flops`` gives (its code run on CPU with fvcore 0.1.5; README 5.7G / 11.4G)."""
    assert timm.create_model(name).flops() == pytest.approx(flops, rel=1e-5)


def test_flop_analysis_charges_each_grouped_scan_at_its_padded_length():
    model = timm.create_model('local_vssm_tiny', dims=8, depths=(1, 1, 1, 1), directions=[['h', 'w2']] * 4)
    analysis = flop_analysis(model, (3, 52, 52))           # grids 13, 7, 4, 2: w2 pads 13 -> 14 and 7 -> 8
    lengths, inner = (14 * 14, 8 * 8, 4 * 4, 2 * 2), (16, 32, 64, 128)
    expected = sum(9 * length * 2 * e * 16 + length * 2 * e for length, e in zip(lengths, inner))
    assert analysis.by_operator()['PythonOp.TracedSelectiveScan'] == expected
    assert not analysis.unsupported_ops()
    assert model.training and not any(isinstance(m, SS2D) and m.trace_scan for m in model.modules())


@pytest.mark.parametrize('kwargs,match', [
    (dict(directions=[['h', 'x']] * 15), 'valid directions are h, h_flip'),
    (dict(directions=[['h']] * 14), 'has 14 layers, but the model has 15 layers'),
    (dict(depths=(2, 2, 2, 2)), 'has 15 layers, but the model has 8 layers'),
    (dict(dims=(8, 16, 32)), 'one entry per stage'),
    (dict(ssm_conv=4), 'odd kernel size'),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('local_vssm_tiny', **kwargs)
