"""classification.benchmarks.flops and tools/flops.py: the original's FLOP figures, and fvcore's count with the scan
handle checked against a hand count."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.benchmarks import build_model, flops
from classification.models.flop_count import flop_analysis
from classification.models.local_vim import MultiMamba
from classification.models.scan_maps import scan_length

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'flops.py'


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('flops_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('name,gflops', [('local_vim_tiny', 1.482), ('local_vim_small', 4.771)])
def test_local_vim_original_convention(name, gflops):
    """The original's analytic ``VisionMamba.flops`` figures (README 1.5G; issue #36)."""
    model = build_model(name)
    assert flops.original_flops(model) / 1e9 == pytest.approx(gflops, abs=5e-4)


def test_local_vssm_original_convention_is_the_fvcore_count():
    """The original's ``VSSM.flops`` figure for LocalVMamba-T (5.7G); LocalVMamba-S (11.373 G) is checked by
    test_local_vmamba.py. For LocalVMamba both conventions are the same count."""
    row = flops.flops_row('timm_local_vssm_tiny')
    assert row['model'] == 'local_vssm_tiny'
    assert row['original'] == row['fvcore'] == pytest.approx(5_728_681_208, rel=1e-5)
    assert row['params'] == pytest.approx(25.53e6, rel=1e-3)
    assert not row['unsupported']


def _small_vim(name='local_vim_tiny', **kwargs):
    return timm.create_model(name, img_size=32, patch_size=8, embed_dim=16, depth=2, num_classes=10,
                             directions=[['h', 'w3_flip'], ['v', 'w2', 'h_flip']], **kwargs)


def test_models_of_one_input_channel_are_counted_on_one_channel_images():
    """flops.py / speed_test.py built images of 3 channels for every model: a model of ``in_chans=1`` (grayscale
    data, a library user's model) failed with 'expected input[1, 3, 32, 32] to have 1 channels'. Its counts now
    differ from the RGB model's by its patch embedding alone: 2 channels x 8 x 8 pixels x 16 outputs per patch, 16
    patches (LocalVim); 2 x 4 x 4 x 8 per patch, 64 patches (LocalVMamba)."""
    vim = {'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'depth': 2}
    rgb, gray = (flops.flops_row('local_vim_tiny_search', 32, model_kwargs={**vim, 'in_chans': c}) for c in (3, 1))
    assert rgb['params'] - gray['params'] == 2 * 8 * 8 * 16
    assert rgb['original'] - gray['original'] == rgb['fvcore'] - gray['fvcore'] == 2 * 8 * 8 * 16 * 16
    vssm = {'dims': 8, 'depths': [1, 1, 1, 1]}
    rgb, gray = (flops.flops_row('local_vssm_tiny_search', 32, model_kwargs={**vssm, 'in_chans': c}) for c in (3, 1))
    assert rgb['original'] - gray['original'] == 2 * 4 * 4 * 8 * 64
    gray_vim = timm.create_model('local_vim_tiny_search', **vim, in_chans=1)
    assert gray_vim.flops() == gray_vim.flops((1, 224, 224)) < timm.create_model('local_vim_tiny_search', **vim).flops()


@pytest.mark.parametrize('name', ['local_vim_tiny', 'local_vim_tiny_middle_cls_token'])
def test_local_vim_fvcore_count_matches_a_hand_count(name):
    """Grid 4x4 (+ a middle class token): w3 pads the 16 tokens to 36, so layer 0 scans its 2 directions at 36 (37)
    positions and layer 1 its 3 at 16 (17). Each grouped scan is charged 9*B*L*D*N + B*D*L with D = K*E and no z
    term; each causal conv B*D*W*(L + W - 1); the linears exactly."""
    model = _small_vim(name)
    batch, cls = 2, int(model.has_cls_token)
    analysis = flop_analysis(model, (3, 32, 32), batch=batch)
    ops = analysis.by_operator()
    channels, inner, state, width, rank = 16, 32, 16, 4, 1
    tokens = 16 + cls
    scan = conv = 0
    linear = batch * channels * 10                                                   # head
    for layer in model.layers:
        mixer = layer.mixer
        assert (mixer.d_inner, mixer.d_state, mixer.d_conv, mixer.dt_rank) == (inner, state, width, rank)
        num_dirs = mixer.num_directions
        length = max(scan_length(d, (4, 4)) for d in mixer.directions) + cls
        scan += 9 * batch * length * num_dirs * inner * state + batch * num_dirs * inner * length
        conv += batch * num_dirs * inner * width * (length + width - 1)
        reduced = mixer.attn.global_reduce.out_features
        linear += batch * tokens * channels * 2 * inner + batch * tokens * inner * channels   # in_proj, out_proj
        linear += 2 * batch * num_dirs * inner * reduced                                      # attention on the means
    conv += batch * 3 * 8 * 8 * channels * 16                                                 # patch embedding
    assert scan == 2 * 9 * (36 + cls) * 2 * 32 * 16 + 2 * 2 * 32 * (36 + cls) \
        + 2 * 9 * (16 + cls) * 3 * 32 * 16 + 2 * 3 * 32 * (16 + cls)                          # the numbers, spelled out
    assert ops['PythonOp.TracedSelectiveScan'] == scan
    assert ops['conv'] == conv
    assert ops['linear'] == linear
    assert not analysis.unsupported_ops()


def test_trace_switch_keeps_the_output_and_is_reset():
    model = _small_vim().eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(image)
        for module in model.modules():
            if isinstance(module, MultiMamba):
                module.trace_scan = True
        traced = model(image)
        for module in model.modules():
            if isinstance(module, MultiMamba):
                del module.trace_scan
    torch.testing.assert_close(traced, expected, rtol=1e-4, atol=1e-5)
    flop_analysis(model.train(), (3, 32, 32))
    assert model.training
    assert not any(m.trace_scan for m in model.modules() if isinstance(m, MultiMamba))


def test_fvcore_counts_the_scan_at_nine_flops_per_state():
    """The fvcore convention charges 9*E*L*N per direction where the original's analytic one charges 5*E*L*N (and
    counts conv, x_proj and dt_proj once per layer): for LocalVim-T at 224 the two differ, 1.482 G vs 2.164 G."""
    model = build_model('local_vim_tiny')
    total, unsupported = flops.fvcore_flops(model)
    assert total / 1e9 == pytest.approx(2.164, abs=5e-4)
    assert not unsupported


def test_cli_prints_a_table(tool, capsys):
    assert tool.main(['timm_local_vim_tiny', '--img-size', '32', '--num-classes', '10']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ['model', 'img']
    row = lines[2].split()
    assert row[:2] == ['local_vim_tiny', '32'] and len(row) == 5
    assert float(row[3]) > 0 and float(row[4]) > float(row[3])


def test_an_img_size_in_model_kwargs_is_the_size_counted(tool, capsys):
    """`--model-kwargs img_size=32` built the model for 32 px but counted it at --img-size's default 224."""
    assert tool.main(['local_vim_tiny', '--model-kwargs', 'img_size=32', '--num-classes', '10']) == 0
    by_kwargs = capsys.readouterr().out.splitlines()[2].split()
    assert tool.main(['local_vim_tiny', '--img-size', '32', '--num-classes', '10']) == 0
    by_flag = capsys.readouterr().out.splitlines()[2].split()
    assert by_kwargs[1] == '32' and by_kwargs == by_flag
    # LocalVim takes a pair too (a TypeError traceback); the count is of square images
    assert tool.main(['local_vim_tiny', '--model-kwargs', 'img_size=[32,32]', '--num-classes', '10']) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == by_flag
    assert tool.main(['local_vim_tiny', '--model-kwargs', 'img_size=[32,48]']) == 2
    assert capsys.readouterr().err.strip() == ("error: model_kwargs img_size=[32, 48]: the images timed and counted "
                                               "are square: give one size")


def test_cli_refuses_unknown_names_with_close_matches(tool, capsys):
    assert tool.main(['local_vim_tny']) == 2
    err = capsys.readouterr().err
    assert "unknown model 'local_vim_tny'" in err and 'local_vim_tiny' in err
    with pytest.raises(tool.UnknownModelError, match='LocalMamba models: local_vim_small'):
        tool.resolve_model_name('zzzz_qqqq')


def test_ctrl_c_in_flops_keeps_the_rows_of_the_models_before_it(tool, monkeypatch, capsys, status_after_ctrl_c):
    """`flops.py A B` ended Ctrl-C in B in a traceback, and A's counts were lost: now A's row is printed, one line
    says it was interrupted, and the exit status is 130."""

    def flops_row(name, *args):
        if name == 'local_vssm_tiny':
            raise KeyboardInterrupt
        return dict(model=name, img_size=224, params=7_000_000, original=1.5e9, fvcore=1.6e9, unsupported={})

    monkeypatch.setattr(flops, 'flops_row', flops_row)
    assert status_after_ctrl_c(tool.main, ['local_vim_tiny', 'local_vssm_tiny']) == 130
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert [line.split() for line in table[2:]] == [['local_vim_tiny', '224', '7,000,000', '1.500', '1.600']]
    assert captured.err.splitlines() == ['interrupted (Ctrl-C); the row that ended is in the table above']


def test_counting_flops_raises_no_deprecation_from_fvcore():
    """fvcore scripts a loss with ``torch.jit.script`` at import, which torch deprecates; a FLOP count in a fresh
    process with FutureWarnings as errors still works (the import silences that one warning)."""
    code = ('import torch; from classification.models.flop_count import count_flops; '
            'print(count_flops(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)), (3, 2, 2)))')
    run = subprocess.run([sys.executable, '-W', 'error::FutureWarning', '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ['60'] and 'FutureWarning' not in run.stderr
