"""tools/export_onnx.py: a checkpoint of a small searched model exported by both exporters runs in onnxruntime at
another batch size than the export's with the model's outputs; an existing file is kept; bad flags are one-line
errors."""
import importlib.util
import os
import signal
import subprocess
import sys

import pytest
import timm
import torch
import yaml

import classification.models  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError
from classification.engine.config import ConfigError, parse_args
from classification.engine import onnx_export
from classification.engine.onnx_export import export, load_model, onnxruntime_difference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECTIONS = [['h', 'w2_flip'], ['v_flip', 'w3']]
SMALL = ['local_vssm_tiny', '--model-kwargs', 'dims=[8,16]', 'depths=[1,1]', '--img-size', '28']

TOOL = os.path.join(REPO, 'tools', 'export_onnx.py')
_spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
export_onnx_tool = importlib.util.module_from_spec(_spec)
_handler = signal.getsignal(signal.SIGINT)
_spec.loader.exec_module(export_onnx_tool)   # it lets Ctrl-C stop its imports quietly; pytest's handler comes back
signal.signal(signal.SIGINT, _handler)
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec('onnxruntime') is None,
                                       reason='onnxruntime not installed')


def refused_in_process(monkeypatch, capsys, *args):
    """Run the tool as its command line does (`run_cli(main)` with these arguments) where it refuses them before any
    work: its exit status, stdout and stderr."""
    monkeypatch.setattr(sys, 'argv', [TOOL, *args])
    with pytest.raises(SystemExit) as stopped:
        export_onnx_tool.run_cli(export_onnx_tool.main)
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


@pytest.fixture
def checkpoint(tmp_path):
    """A training-style checkpoint of the small model with 5 classes, and its directions file."""
    directions = tmp_path / 'directions.yaml'
    directions.write_text(yaml.safe_dump({'directions': DIRECTIONS}))
    torch.manual_seed(0)
    model = timm.create_model('local_vssm_tiny', dims=(8, 16), depths=(1, 1), num_classes=5, directions=DIRECTIONS)
    path = tmp_path / 'model.pth.tar'
    torch.save({'model': model.state_dict(), 'ema_model': {k: v + 1 for k, v in model.state_dict().items()},
                'model_name': 'local_vssm_tiny', 'directions': DIRECTIONS}, path)
    return ['--model', *SMALL, '--directions', str(directions), '--resume', str(path)], model


@needs_onnxruntime
@pytest.mark.parametrize('exporter', [
    'torchscript',
    pytest.param('dynamo', marks=pytest.mark.skipif(
        torch.__version__ < '2.8' or importlib.util.find_spec('onnxscript') is None,
        reason='the torch.export-based exporter needs torch >= 2.8 and onnxscript'))])
def test_exported_checkpoint_computes_the_models_outputs_at_another_batch(checkpoint, exporter, tmp_path, capfd):
    flags, trained = checkpoint
    cfg = parse_args(flags, evaluation=True)
    path = str(tmp_path / 'model.onnx')
    report = export(cfg, path, exporter, example_batch=2, check=True, overwrite=False, ema=False)
    written = [p for p in (path, path + '.data') if os.path.exists(p)]
    assert cfg.num_classes == 5 and report['bytes'] == sum(os.path.getsize(p) for p in written)
    assert report['files'] == written and (exporter == 'torchscript' or len(written) == 2)
    assert '[W:onnxruntime' not in capfd.readouterr().err   # its optimiser's notes stay out of the check's output
    assert report['max_abs_difference'] < 1e-5              # onnxruntime at batch 3, against the loaded model
    assert onnxruntime_difference(trained.eval(), path, 28, batch=1) < 1e-5   # the checkpoint's weights, at batch 1


def test_the_ema_weights_are_loaded_when_asked(checkpoint):
    flags, trained = checkpoint
    model = load_model(parse_args(flags, evaluation=True), ema=True)
    torch.testing.assert_close(model.classifier.head.bias, trained.classifier.head.bias + 1)
    with pytest.raises(ConfigError, match='--ema needs --resume'):
        load_model(parse_args(['--model', *SMALL, '--directions', flags[flags.index('--directions') + 1]],
                              evaluation=True), ema=True)


@needs_onnxruntime
def test_the_tool_takes_model_ema_as_tools_test_py_spells_it(checkpoint, tmp_path):
    """The epilog sends the model flags to tools/test.py -h, whose --model-ema evaluates the EMA weights: the export
    took that flag as a model flag and exported the model's weights without a word."""
    flags, trained = checkpoint
    path = tmp_path / 'ema.onnx'
    done = subprocess.run([sys.executable, TOOL, *flags, '--onnx', str(path), '--exporter', 'torchscript', '--no-check',
                           '--model-ema'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ' (EMA) to ' in done.stdout
    ema_model = load_model(parse_args(flags, evaluation=True), ema=True)
    assert onnxruntime_difference(ema_model, str(path), 28, batch=1) < 1e-3   # its weights are the model's + 1
    assert onnxruntime_difference(trained.eval(), str(path), 28, batch=1) > 1


@needs_onnxruntime
def test_the_tool_keeps_an_existing_file_and_refuses_bad_flags(checkpoint, tmp_path, monkeypatch, capsys):
    """The refusals come before any export: checked in-process through the command line's run_cli(main); the export
    that replaces the file runs the command line."""
    flags, _ = checkpoint
    existing = tmp_path / 'old.onnx'
    existing.write_text('keep me')

    def refused(*args):
        return refused_in_process(monkeypatch, capsys, *flags, *args)

    status, _, err = refused('--onnx', str(existing), '--exporter', 'torchscript')
    assert status == 2 and f'error: {existing} exists: give --overwrite' in err
    assert existing.read_text() == 'keep me'
    status, _, err = refused('--onnx', str(tmp_path / 'one.onnx'), '--example-batch', '1')
    assert status == 2 and 'error: --example-batch must be 2 or more' in err
    assert not os.path.exists(tmp_path / 'one.onnx')
    status, out, err = refused('--onnx', str(existing / 'sub' / 'm.onnx'), '--exporter', 'torchscript')
    assert (status, out, err.strip().splitlines()[-1]) == (
        2, '', f'error: cannot write {existing / "sub" / "m.onnx"}: {existing} is a file, not a folder')
    status, _, err = refused('--onnx', str(tmp_path / 'one.onnx'), '--exporter', 'torchscript', '--optimize')
    assert status == 2 and err.strip().splitlines()[-1] == (
        'error: --optimize optimises the dynamo export, not the torchscript one: drop it, or give --exporter dynamo')
    done = subprocess.run([sys.executable, TOOL, *flags, '--onnx', str(existing), '--exporter', 'torchscript',
                           '--overwrite'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'onnxruntime vs the model, batch 3: largest difference of the outputs' in done.stdout
    assert f'Wrote {existing} in ' in done.stdout           # one file: no weights file to name
    assert existing.read_bytes()[:20] != b'keep me'


@pytest.mark.parametrize('args, meant', [(['--exp', 'torchscript'], '--exporter'), (['--over'], '--overwrite'),
                                         (['--example=3'], '--example-batch')])
def test_an_abbreviated_export_flag_is_refused_not_taken_for_a_model_flag(checkpoint, tmp_path, args, meant,
                                                                          monkeypatch, capsys):
    """The export's flags are not abbreviated, so the model flags' parser took `--exp torchscript` for --experiment
    and the dynamo exporter ran; `--over` became tools/test.py's --overwrite and the export refused to replace the
    file. (Refused in argument parsing: checked in-process through the command line's run_cli(main).)"""
    flags, _ = checkpoint
    status, out, err = refused_in_process(monkeypatch, capsys, *flags, '--onnx', str(tmp_path / 'm.onnx'),
                                          '--no-check', *args)
    name = args[0].split('=')[0]
    assert (status, out) == (2, '')
    assert err.strip().splitlines()[-1].endswith(
        f'error: {name}: give the flag in full ({meant}): the export\'s flags are not abbreviated')
    assert not os.path.exists(tmp_path / 'm.onnx')


def test_without_img_size_the_export_takes_the_runs_size_and_bad_flags_come_first(checkpoint, tmp_path, monkeypatch,
                                                                                  capsys):
    """Without -c or --img-size the tool printed 'at NonexNone' and died in torch.randn; a bad flag was refused only
    after that line."""
    flags, _ = checkpoint
    flags = [flag for flag in flags if flag not in ('--img-size', '28')]
    path = flags[flags.index('--resume') + 1]
    ckpt = torch.load(path, weights_only=True)
    torch.save(dict(ckpt, config={'img_size': 28}), path)

    status, out, err = refused_in_process(monkeypatch, capsys, *flags, '--onnx', str(tmp_path / 'one.onnx'),
                                          '--example-batch', '1')
    assert status == 2 and out == '' and 'error: --example-batch must be 2 or more' in err
    done = subprocess.run([sys.executable, TOOL, *flags, '--onnx', str(tmp_path / 'new' / 'm.onnx'), '--exporter',
                           'torchscript', '--no-check'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr     # the missing folder is made (its staging folder went there first)
    assert (f'Exporting local_vssm_tiny at 28x28 (the size its run was trained at) with {path} to '
            f'{tmp_path / "new" / "m.onnx"}') in done.stdout
    assert os.listdir(tmp_path / 'new') == ['m.onnx']
    args = parse_args(flags, evaluation=True)
    torch.save(ckpt, path)                                  # no recorded config: the dataset's default
    assert onnx_export.resolve_export_size(args) == "--dataset imagenet's default size" and args.img_size == 224


@pytest.mark.parametrize('missing, exporter, pattern', [
    ('onnxruntime', 'torchscript', 'the check runs onnxruntime, which is not installed: .* or give --no-check'),
    ('onnxscript', 'dynamo', 'the dynamo exporter needs torch >= 2.8 and onnxscript .* give --exporter torchscript')])
def test_a_missing_package_is_named_before_anything_is_written(checkpoint, missing, exporter, pattern, monkeypatch,
                                                               tmp_path):
    flags, _ = checkpoint
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: None if name == missing else
                        find_spec(name, *args))
    with pytest.raises(ConfigError, match=pattern):
        export(parse_args(flags, evaluation=True), str(tmp_path / 'm.onnx'), exporter, 2, True, False, False)
    assert not (tmp_path / 'm.onnx').exists()


def test_a_failed_export_leaves_the_existing_file_and_no_staging_folder(checkpoint, monkeypatch, tmp_path):
    flags, _ = checkpoint
    existing = tmp_path / 'm.onnx'
    existing.write_text('keep me')

    def half_written(model, path, *args):
        with open(path, 'w') as f:
            f.write('half')
        raise RuntimeError('the exporter failed')

    monkeypatch.setattr(onnx_export, 'export_model', half_written)
    with pytest.raises(RuntimeError, match='the exporter failed'):
        export(parse_args(flags, evaluation=True), str(existing), 'torchscript', 2, False, True, False)
    assert existing.read_text() == 'keep me'
    assert sorted(os.listdir(tmp_path)) == ['directions.yaml', 'm.onnx', 'model.pth.tar']


def test_an_unwritable_folder_is_named_before_the_export_not_its_staging_one(checkpoint, tmp_path, monkeypatch,
                                                                             capsys):
    """An --onnx path in a folder the user cannot write failed after the model was loaded, naming the hidden staging
    folder (`error: Permission denied: DIR/.onnx-export-k3j2...`). os.access mocked: this may run as root; the
    staging folder that cannot be made (/proc as root) is mocked too."""
    flags, _ = checkpoint
    folder, path = str(tmp_path / 'ro'), str(tmp_path / 'ro' / 'm.onnx')
    os.mkdir(folder)
    real_access = os.access
    with monkeypatch.context() as patched:
        patched.setattr(os, 'access', lambda name, mode: name != folder and real_access(name, mode))
        status, out, err = refused_in_process(monkeypatch, capsys, *flags, '--onnx', path, '--exporter',
                                              'torchscript', '--no-check')
    assert (status, out, err) == (2, '', f'error: cannot write {path}: {folder} is not writable\n')

    def no_staging_folder(dir, prefix):
        raise PermissionError(13, 'Permission denied', os.path.join(dir, prefix + 'k3j2'))

    monkeypatch.setattr(onnx_export.tempfile, 'TemporaryDirectory', no_staging_folder)
    with pytest.raises(ConfigError) as refused:
        export(parse_args(flags, evaluation=True), path, 'torchscript', 2, False, False, False)
    assert str(refused.value) == f'cannot write {path}: Permission denied'
    assert os.listdir(folder) == []


def test_weights_of_a_model_built_with_other_kwargs_name_the_runs_kwargs(checkpoint):
    """A run's checkpoint exported without the --model-kwargs its run gave (e.g. the quick start's patch_size=4,
    without -c) was refused as 'does not fit this model (another model?)', though it is that model."""
    flags, _ = checkpoint
    path = flags[flags.index('--resume') + 1]
    torch.save(dict(torch.load(path, weights_only=True), config={'model_kwargs': {'dims': [8, 16], 'depths': [1, 1]}}),
               path)
    flags = ['dims=[16,32]' if flag == 'dims=[8,16]' else flag for flag in flags]
    with pytest.raises(CheckpointError) as refused:
        load_model(parse_args(flags, evaluation=True), ema=False)
    assert str(refused.value).startswith(f'{path} does not fit this model (another model?): ')
    assert str(refused.value).endswith('; its run built the model with --model-kwargs dims=[8,16] depths=[1,1]: give '
                                       'them')


def test_a_runs_own_kwargs_add_no_hint_and_its_args_yaml_beside_is_named(checkpoint, tmp_path):
    """Weights that do not fit a model built with their run's own --model-kwargs: the refusal names no kwargs to give
    (the command gives them already). A checkpoint in its run's folder names that run's args.yaml too."""
    flags, _ = checkpoint
    path = flags[flags.index('--resume') + 1]
    torch.manual_seed(0)
    wider = timm.create_model('local_vssm_tiny', dims=(16, 32), depths=(1, 1), num_classes=5, directions=DIRECTIONS)
    torch.save({'model': wider.state_dict(), 'model_name': 'local_vssm_tiny', 'directions': DIRECTIONS,
                'config': {'model_kwargs': {'dims': [8, 16], 'depths': [1, 1]}}}, path)
    with pytest.raises(CheckpointError) as refused:
        load_model(parse_args(flags, evaluation=True), ema=False)
    assert str(refused.value).startswith(f'{path} does not fit this model (another model?): ')
    assert 'model-kwargs' not in str(refused.value) and 'args.yaml' not in str(refused.value)
    (tmp_path / 'args.yaml').write_text('model: local_vssm_tiny\n')
    flags = ['dims=[4,8]' if flag == 'dims=[8,16]' else flag for flag in flags]   # fits neither
    with pytest.raises(CheckpointError) as refused:
        load_model(parse_args(flags, evaluation=True), ema=False)
    assert str(refused.value).endswith(f"; its run built the model with --model-kwargs dims=[8,16] depths=[1,1]: give "
                                       f"them (or -c {tmp_path / 'args.yaml'}, its run's whole config)")


@pytest.mark.parametrize('bad, message', [
    (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--resume', 'missing.pth.tar'], 'checkpoint not found: missing.pth.tar')])
def test_an_unknown_model_or_a_missing_checkpoint_is_refused_before_the_exporting_line(checkpoint, bad, message,
                                                                                       tmp_path, monkeypatch, capsys):
    """The tool printed 'Exporting no_such_model at 28x28 with random weights to ...' and then the error."""
    flags, _ = checkpoint
    status, out, err = refused_in_process(monkeypatch, capsys, *flags, *bad, '--onnx', str(tmp_path / 'm.onnx'))
    assert (status, out) == (2, '')
    assert err.startswith(f'error: {message}') and err.count('\n') == 1
