"""Bad input, a full disk and Ctrl-C end with one line (exit 2; Ctrl-C 130 with the resume command), no traceback."""
import contextlib
import os
import resource
import runpy
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from classification.engine.cli import resume_command
from classification.engine.config import ConfigError, parse_args

from safety_helpers import TINY_RUN, assert_one_line_error, run_tool
from training_helpers import TOOLS, tool_env, write_image


def cli(monkeypatch, capsys, script, *argv):
    """Run tools/<script> in this process as from the shell: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", [os.path.join(TOOLS, script), *argv])
    monkeypatch.delenv("LOCALMAMBA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(os.path.join(TOOLS, script), run_name="__main__")
    return info.value.code, capsys.readouterr().err


def assert_error(result, message):
    code, err = result
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (code, err)
    assert message in err, err


@pytest.mark.parametrize("flags, message", [
    (["-b", "0"], "-b/--batch-size must be in [1, inf), got 0"),
    (["--img-size", "0"], "--img-size must be in [1, inf), got 0"),
    (["--num-classes", "1"], "--num-classes must be in [2, inf), got 1"),
    (["--num-classes", "0"], "--num-classes must be in [2, inf), got 0"),
    (["--epochs", "0"], "--epochs must be in [1, inf), got 0"),
    (["--keep-num", "0"], "--keep-num must be in [1, inf), got 0"),
    (["--seed", str(2 ** 64)], f"--seed must be in [0, {2 ** 63 - 1}], got {2 ** 64}"),  # torch's seeds are 64-bit
    (["--lr", "0"], "--lr must be in (0, inf), got 0.0"),
    (["--reprob", "1.5"], "--reprob must be in [0, 1], got 1.5"),
    (["--lr", "nan"], "--lr must be in (0, inf), got nan"),
    (["--lr", "inf"], "--lr must be in (0, inf), got inf"),
    (["--model-ema-decay", "nan"], "--model-ema-decay must be in [0, 1], got nan"),
    (["--image-mean", "124", "116", "104"], "--image-mean must be in [0, 1], got 124.0"),  # of 0..1 pixels
    (["--cutmix-minmax", "0.8", "0.2"], "--cutmix-minmax 0.8 0.2: at --img-size 16 no CutMix box side lies in "
                                        "[12, 3) pixels: give a max one pixel (1/16) or more above the min"),
    (["--cutmix-minmax", "0.3", "0.31"], "--cutmix-minmax 0.3 0.31: at --img-size 16 no CutMix box side lies in "
                                         "[4, 4) pixels"),
    (["--device", "foo"], "--device 'foo' is not one of auto, cpu, cuda, cuda:N"),
    (["--model-kwargs", "depht=2"], "--model-kwargs: model vit_tiny_patch16_224 does not take 'depht'; did you "
                                    "mean depth"),
    (["--overwrite", "--resume", "x.pth.tar"], "give only one of them"),
    (["--experiment", ""], "--experiment must name a folder inside --output"),
    (["--experiment", "../escape"], "--experiment must name a folder inside --output"),
    (["--experiment", "runs/../../escape"], "--experiment must name a folder inside --output"),
    (["--experiment", "/tmp/escape"], "--experiment must name a folder inside --output"),
    (["--experiment", "./"], "--experiment must name a folder inside --output"),
    (["--aa", "rand-inc1-m9"], "--aa 'rand-inc1-m9': unknown RandAugment section 'inc1'"),
    (["--aa", "rand-m9-w1"], "--aa 'rand-m9-w1': only the weight set w0 exists"),
    (["--aa", "foo", "--aa-impl", "timm"], "--aa 'foo': Unknown AA policy foo (policies: 'rand-m9-mstd0.5' as the "
                                           "recipe, or any 'rand-...'; 'augmix-...'; timm's AutoAugment policies "
                                           "'original', 'originalr', 'v0', 'v0r', '3a')"),
    (["--aa", "autoaug"], "--aa 'autoaug': Unknown AA policy autoaug (policies: "),
    (["--data-path", "mine"], "--data-path mine: --dataset digits is scikit-learn's bundled images and reads no "
                              "folder; for your images give --dataset imagenet (class folders or meta lists)"),
    (["--aa", "rand-x9", "--aa-impl", "timm"], "--aa 'rand-x9': "),
])
def test_bad_flags(flags, message, monkeypatch, capsys, tmp_path):
    assert_error(cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), *flags),
                 message)
    assert not os.listdir(tmp_path)


def test_a_direction_module_that_cannot_be_imported_is_one_line(monkeypatch, capsys, tmp_path):
    """LOCALMAMBA_DIRECTION_MODULES naming a module that is not there: its message was the end of a chained
    traceback."""
    directions = tmp_path / "directions.yaml"
    directions.write_text("directions: [[h, snake_demo]]\n")
    monkeypatch.setenv("LOCALMAMBA_DIRECTION_MODULES", "no_such_scans_module")
    monkeypatch.setattr("classification.models.scan_maps._imported_modules", set())
    assert_error(cli(monkeypatch, capsys, "train.py", "--dataset", "digits", "--model", "local_vim_tiny",
                     "--directions", str(directions), "--output", str(tmp_path / "out")),
                 "LOCALMAMBA_DIRECTION_MODULES: cannot import 'no_such_scans_module' (No module named "
                 "'no_such_scans_module'); it must be importable")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(monkeypatch, capsys, tmp_path):
    assert_error(cli(monkeypatch, capsys, "test.py", *TINY_RUN, "--device", "cuda", "--resume", "x.pth.tar"),
                 "--device cuda was asked for but CUDA is not available")


def test_an_img_size_the_models_kwargs_do_not_build_it_for_is_one_line(monkeypatch, capsys, tmp_path):
    """A ViT built for 16 px by model_kwargs' img_size, given --img-size 32 on the command line: its first forward
    failed in a traceback (AssertionError: Input height (32) doesn't match model (16)), in training after its run
    folder was written, and in tools/test.py."""
    message = ("--img-size 32: model vit_tiny_patch16_224 is built for 16x16 inputs (model_kwargs img_size) and takes "
               "no other size: give both the same size (--img-size 16, or --model-kwargs img_size=32)")
    assert_error(cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--img-size", "32", "--output", str(tmp_path)),
                 message)
    assert not os.listdir(tmp_path)
    checkpoint = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, checkpoint)
    assert_error(cli(monkeypatch, capsys, "test.py", *TINY_RUN, "--img-size", "32", "--resume", str(checkpoint),
                     "--output", str(tmp_path / "eval")), message)


def test_output_that_is_a_file(monkeypatch, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    assert_error(cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--output", str(tmp_path / "file")),
                 f"--output: cannot create the run folder {tmp_path / 'file' / 'exp'}: Not a directory")


@contextlib.contextmanager
def unwritable(folder):
    """Make `folder` unwritable for this user: mode 0500, and for root (who ignores modes) the immutable attribute."""
    os.chmod(folder, 0o500)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute (chattr +i)")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o700)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_output_that_is_not_writable(monkeypatch, capsys, tmp_path):
    (tmp_path / "ro" / "exp").mkdir(parents=True)
    with unwritable(tmp_path / "ro" / "exp"):
        assert_error(cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--output", str(tmp_path / "ro")),
                     f"--output: the run folder {tmp_path / 'ro' / 'exp'} is not writable")


def test_a_resumed_run_whose_folder_is_not_writable_names_its_checkpoint(finished_run, monkeypatch, capsys):
    """A resumed run continues in its checkpoint's folder: an unwritable one was blamed on --output, which the command
    did not give; the message names --resume and the way on (os.access mocked: this may run as root)."""
    folder, real_access = str(finished_run), os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: os.path.realpath(path) != os.path.realpath(folder)
                        and real_access(path, mode, **kw))
    last = finished_run / "last.pth.tar"
    code, err = cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--epochs", "3", "--resume", str(last))
    assert_error((code, err), f"--resume {last}: the run folder {folder} is not writable; give --branch --experiment "
                              f"NEW to continue from its checkpoint in a new folder")


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limit")
def test_full_disk(tmp_path):
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), check=False,
                    preexec_fn=limit_file_size)
    assert_one_line_error(proc, f"cannot write checkpoint {tmp_path / 'exp' / 'last.pth.tar'}: ")  # the first
    assert not [n for n in os.listdir(tmp_path / "exp") if n.startswith(".tmp-")]


def test_resuming_a_finished_run(finished_run, monkeypatch, capsys):
    last = finished_run / "last.pth.tar"
    assert_error(cli(monkeypatch, capsys, "train.py", *TINY_RUN, "--epochs", "2", "--resume", str(last)),
                 f"{last} already finished epoch 1 and --epochs 2 ends the run at epoch 1 (epochs count from 0, as "
                 f"the log does): nothing left to train (raise --epochs")


def test_text_file_as_checkpoint(tmp_path, monkeypatch, capsys):
    text = tmp_path / "notes.pth.tar"
    text.write_text("these are not weights\n")
    for script, argv in (("test.py", [*TINY_RUN, "--resume", str(text)]),
                         ("convert_ckpt.py", [str(text), str(tmp_path / "out.pth")])):
        assert_error(cli(monkeypatch, capsys, script, *argv),
                     f"{text} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle")


def test_weights_that_timms_position_filter_fails_on_are_named_as_not_fitting(tmp_path, monkeypatch, capsys):
    """A ViT checkpoint whose position table holds a class token's row (26 rows: 5x5 + 1) given to the tiny ViT
    without one: timm's checkpoint_filter_fn failed reshaping it into a square grid (a RuntimeError traceback)."""
    import timm
    other = timm.create_model("vit_tiny_patch16_224", img_size=20, patch_size=4, depth=1, embed_dim=32, num_heads=2,
                              num_classes=10)
    path = tmp_path / "with_class_token.pth"
    torch.save({"state_dict": other.state_dict()}, path)
    assert_error(cli(monkeypatch, capsys, "test.py", *TINY_RUN, "--resume", str(path)),
                 f"{path} does not fit this model (another model?): ")


def _model_whose_filter_raises(error, monkeypatch):
    """A model whose module's checkpoint_filter_fn raises ``error``."""
    import types

    def checkpoint_filter_fn(state_dict, model):
        raise error

    module = types.ModuleType("filtered_model")
    module.checkpoint_filter_fn = checkpoint_filter_fn
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return type("Filtered", (torch.nn.Linear,), {"__module__": module.__name__})(2, 2)


@pytest.mark.parametrize("error, words", [
    (RuntimeError("shape '[1, 5, 5, -1]' is invalid for input of size 832\nmore"),
     "RuntimeError: shape '[1, 5, 5, -1]' is invalid for input of size 832"),
    (IndexError("index 25 is out of bounds"), "IndexError: index 25 is out of bounds"),
    (KeyError("pos_embed"), "KeyError: 'pos_embed'"), (AssertionError(), "AssertionError: ")],
    ids=["RuntimeError", "IndexError", "KeyError", "bare assert"])
def test_weights_that_a_checkpoint_filter_fails_on_pass_on_as_they_are(error, words, monkeypatch):
    """A filter that fails on another model's weights (a reshape, an index, a key, a bare assert) leaves them as they
    are, in one log line naming the error's first line (the load then names what does not fit); a ValueError, a
    filter's own refusal, goes through."""
    from types import SimpleNamespace

    from classification.engine import checkpoint

    lines = []
    monkeypatch.setattr(checkpoint, "logger", SimpleNamespace(info=lines.append))
    weights = {"weight": torch.ones(2, 2)}
    fitted = checkpoint.fit_to_model(_model_whose_filter_raises(error, monkeypatch), weights)
    assert list(fitted) == ["weight"] and fitted["weight"] is weights["weight"]
    assert lines == [f"checkpoint weights left as they are: Filtered's checkpoint_filter_fn cannot fit them ({words})"]
    with pytest.raises(ValueError, match="^only square tables$"):
        checkpoint.fit_to_model(_model_whose_filter_raises(ValueError("only square tables"), monkeypatch), weights)


@pytest.mark.parametrize("legacy, kept", [(False, 1 / 2), (True, 1 / 2), (False, 0), (False, 3)],
                         ids=["archive", "torch<1.6 pickle", "empty", "3 bytes"])
def test_a_truncated_checkpoint_is_named_with_its_size(legacy, kept, finished_run, tmp_path, monkeypatch, capsys):
    """A checkpoint cut short (a partial copy, a write killed elsewhere; `kept`: the part of it, or the bytes, kept)
    was 'not a PyTorch checkpoint' with torch's text about a zip central directory or an unexpected EOF, or with the
    few bytes it starts with."""
    whole = tmp_path / "whole.pth.tar"
    torch.save(torch.load(finished_run / "last.pth.tar", weights_only=True), whole,
               _use_new_zipfile_serialization=not legacy)
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * kept) if kept < 1 else kept])
    size = f"{cut.stat().st_size:,} bytes"
    for script, argv in (("train.py", [*TINY_RUN, "--epochs", "3", "--resume", str(cut)]),
                         ("test.py", [*TINY_RUN, "--resume", str(cut)])):
        assert_error(cli(monkeypatch, capsys, script, *argv),
                     f"{cut} looks truncated ({size}, its end is missing: a copy or a write that did not finish)")


def test_convert_refuses_a_checkpoint_without_tensors(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.pth.tar"
    torch.save({"model": {}, "epoch": 0}, empty)
    assert_error(cli(monkeypatch, capsys, "convert_ckpt.py", str(empty), str(tmp_path / "out.pth")),
                 f"{empty}: 'model' holds no tensors; nothing to convert")
    assert not (tmp_path / "out.pth").exists()


def test_convert_names_a_file_that_stands_where_the_output_needs_a_folder(tmp_path, monkeypatch, capsys):
    """`convert_ckpt.py IN FILE/out.ckpt` said only 'cannot write checkpoint FILE/out.ckpt: File exists'."""
    ckpt = tmp_path / "last.pth.tar"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 0}, ckpt)
    in_the_way = tmp_path / "released"
    in_the_way.write_text("")
    out = in_the_way / "out.ckpt"
    assert_error(cli(monkeypatch, capsys, "convert_ckpt.py", str(ckpt), str(out)),
                 f"cannot write checkpoint {out}: {in_the_way} is a file, not a folder")
    assert sorted(os.listdir(tmp_path)) == ["last.pth.tar", "released"]


def test_empty_class_folder(tmp_path, monkeypatch, capsys):
    for name in ("a", "b"):
        for i in range(2):
            write_image(str(tmp_path / "data" / "train" / name / f"{i}.png"), seed=i, fmt="PNG")
            write_image(str(tmp_path / "data" / "val" / name / f"{i}.png"), seed=i, fmt="PNG")
    (tmp_path / "data" / "train" / "c").mkdir()
    flags = [f for f in TINY_RUN if f != "digits"]
    flags.remove("--dataset")
    assert_error(cli(monkeypatch, capsys, "train.py", *flags, "-b", "2", "--data-path", str(tmp_path / "data"),
                     "--output", str(tmp_path / "out")),
                 f"class folder {tmp_path / 'data' / 'train' / 'c'} holds no image files")


def test_unreadable_image_in_a_loader_worker(tmp_path):
    """A DataLoader worker re-raises with the worker's traceback in the message; the user still sees one line."""
    for name in ("a", "b"):
        for i in range(2):
            write_image(str(tmp_path / "data" / "train" / name / f"{i}.png"), seed=i, fmt="PNG")
            write_image(str(tmp_path / "data" / "val" / name / f"{i}.png"), seed=i, fmt="PNG")
    bad = tmp_path / "data" / "train" / "a" / "0.png"
    bad.write_text("not an image\n")
    flags = [f for f in TINY_RUN if f not in ("--dataset", "digits")]
    flags[flags.index("-j") + 1] = "1"
    proc = run_tool("train.py", *flags, "-b", "4", "--epochs", "1", "--data-path", str(tmp_path / "data"),
                    "--output", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, f"error: cannot read image {bad}: cannot identify image file")


@pytest.mark.parametrize("debug_flag, debug_env", [(True, None), (False, "1")])
def test_debug_lets_the_exception_through(debug_flag, debug_env, monkeypatch):
    script = os.path.join(TOOLS, "train.py")
    monkeypatch.setattr(sys, "argv", [script, *TINY_RUN, "-b", "0", *(["--debug"] if debug_flag else [])])
    if debug_env:
        monkeypatch.setenv("LOCALMAMBA_DEBUG", debug_env)
    with pytest.raises(ConfigError, match="-b/--batch-size must be in"):  # Python prints its traceback
        runpy.run_path(script, run_name="__main__")


def test_ctrl_c_prints_the_resume_command(tmp_path):
    argv = [os.path.join(TOOLS, "train.py"), *TINY_RUN, "--epochs", "50", "--output", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, *argv], env=tool_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last = tmp_path / "exp" / "last.pth.tar"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    prefix = "interrupted; continue with: "
    assert lines[-1].startswith(prefix)
    assert shlex.split(lines[-1][len(prefix):]) == ["python", *argv[:1], *argv[1:], "--resume", str(last)]


@pytest.mark.parametrize("flags", [["--overwrite"], ["--overw"], ["--res", "auto"], ["--resu=auto"],
                                   ["--rewi", "--resume", "runs/exp/checkpoint-0.pth.tar"],
                                   ["--bra", "--experiment", "b", "--resume", "runs/a/last.pth.tar"]])
def test_the_resume_command_leaves_out_the_folder_flags_however_they_are_abbreviated(flags):
    """argparse takes an unambiguous prefix of a flag: the command printed for a run started with `--overw` kept it,
    and was refused (`--overwrite starts a run afresh and --resume continues one`); with `--bra` it branched again."""
    words = shlex.split(resume_command(["tools/train.py", *TINY_RUN, *flags], "runs/b/last.pth.tar"))
    args = parse_args(words[2:])
    assert (args.resume, args.overwrite, args.rewind, args.branch) == ("runs/b/last.pth.tar", False, False, False)


def test_the_resume_command_drops_a_resume_given_with_an_equals_sign_and_keeps_the_next_flag():
    """`--resume=PATH` is one word: the command printed leaves it out and keeps the flag after it (taking the next
    word for its value, as for `--resume PATH`, dropped `--lr` and left its value alone on the line)."""
    command = resume_command(["tools/train.py", "--resume=runs/a/last.pth.tar", "--lr", "0.1", "--epochs", "3"],
                             "runs/a/last.pth.tar")
    assert command == "python tools/train.py --lr 0.1 --epochs 3 --resume runs/a/last.pth.tar"


# Runs a tool with Ctrl-C arriving while it imports torch (the first seconds, before run_cli).
INTERRUPT_AT_TORCH_IMPORT = """
import importlib.abc, os, runpy, signal, sys
class InterruptAtTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, InterruptAtTorch())
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("tool", ["train.py", "convert_ckpt.py", "benchmark.py", "flops.py", "gpu_check.py"])
def test_ctrl_c_while_a_tool_imports_stops_quietly(tool):
    """Ctrl-C in the first seconds (torch and timm still importing, before run_cli) printed a KeyboardInterrupt
    traceback; the process now stops as the shell expects, with nothing on stderr."""
    # SIGINT at its default in the tool, as in a terminal, however pytest was started (a script's background job,
    # which the shell starts with SIGINT ignored, passed that on: the signal did nothing and the tool printed its help)
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_AT_TORCH_IMPORT, os.path.join(TOOLS, tool)],
                          env=tool_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == -signal.SIGINT, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout == ""


# Runs tools/flops.py with a real Ctrl-C (SIGINT) arriving in the count of its second model.
INTERRUPT_IN_THE_SECOND_COUNT = """
import os, runpy, signal, sys
from classification.benchmarks import flops
def flops_row(name, *args):
    if name == "local_vssm_tiny":
        os.kill(os.getpid(), signal.SIGINT)
    return dict(model=name, img_size=224, params=7, original=None, fvcore=1e9, unsupported={})
flops.flops_row = flops_row
sys.argv = [sys.argv[1], "local_vim_tiny", "local_vssm_tiny"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_after_a_benchmark_tools_quiet_start_ends_in_one_line():
    """The quiet start (SIGINT at its default while the tool imports) is undone before the work, so that Ctrl-C
    in it keeps the rows that ended and ends in one line with status 130."""
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_IN_THE_SECOND_COUNT, os.path.join(TOOLS, "flops.py")],
                          env=tool_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["interrupted (Ctrl-C); the row that ended is in the table above"]
    assert "local_vim_tiny" in proc.stdout and "local_vssm_tiny" not in proc.stdout


def test_a_tool_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
    """A run started in the background of a script (SIGINT ignored) must not die with the script's Ctrl-C: neither
    the tool's quiet start nor run_cli turns SIGINT back on."""
    probe = ("import signal; from classification.engine import cli; "
             "cli.run_cli(lambda: print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN))")
    proc = subprocess.run([sys.executable, "-c", probe], env=tool_env(), capture_output=True, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


@pytest.mark.parametrize("variable, value, message", [
    ("LOCALMAMBA_BACKEND", "foo", "LOCALMAMBA_BACKEND='foo' is not a valid backend; valid values are: auto, cuda"),
    ("LOCALMAMBA_CPU_ISA", "foo", "LOCALMAMBA_CPU_ISA='foo' is not an instruction set; valid values are: baseline"),
    ("LOCALMAMBA_BACKEND", "triton", "LOCALMAMBA_BACKEND=triton cannot run op")])
def test_bad_kernel_environment_variables(variable, value, message, tmp_path):
    """They ended in a traceback at the first forward pass; an unknown value is now refused before the run starts
    (nothing is written), a backend that cannot run an op when that op is first called."""
    env = {k: v for k, v in tool_env().items() if k != "TRITON_INTERPRET"}
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path / "out"), check=False,
                    env={**env, variable: value})
    assert_one_line_error(proc, message)
    if value == "foo":
        assert not (tmp_path / "out").exists()


def test_a_kernel_that_does_not_build_under_require_is_an_error_without_traceback(tmp_path):
    """LOCALMAMBA_CPU_KERNEL=require with a compiler that runs and fails: train.py ended in a KernelBuildError
    traceback; it is now `error: ` with the compiler's full output (as docs/kernels.md documents for `require`),
    status 2."""
    env = {**tool_env(), "CC": "false", "LOCALMAMBA_CPU_KERNEL": "require",
           "LOCALMAMBA_CACHE_DIR": str(tmp_path / "kernel-cache")}
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path / "out"), check=False, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: LOCALMAMBA_CPU_KERNEL=require, but building the CPU kernel "), proc.stderr
    assert "the compiler said:" in proc.stderr and "/false" in proc.stderr and "non-zero exit status 1" in proc.stderr
    assert not (tmp_path / "out").exists()


GLOO_LINE = ("error: rank 1 lost another rank, which stopped first (its error, if it printed one, is above or below; "
             "the launcher's report names its exit status): ")
NCCL_LINE = ("error: rank 1 lost another rank, which stopped first, hangs or was cut off by a network fault (NCCL "
             "does not tell which) (its error, if it printed one, is above or below; the launcher's report names its "
             "exit status): ")


@pytest.mark.parametrize("line, text", [
    (GLOO_LINE, "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:9143. This is typically "
                "caused by a remote worker crashing."),
    (NCCL_LINE, "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, remote process exited "
                "or there was a network error, NCCL version 2.27.5\nncclRemoteError: A call failed possibly due to a "
                "network error or a remote process exiting prematurely.\nLast error:\nsocketProgressOpt: Call to recv "
                "from 10.0.0.2<43651> failed : Connection reset by peer"),
    (NCCL_LINE, "NCCL communicator was aborted on rank 0. Original reason for failure was: NCCL error: remote process "
                "exited or there was a network error, NCCL version 2.27.5"),
    (NCCL_LINE, "NCCL communicator was aborted on rank 0."),    # without a recorded reason: no other text to match
    (NCCL_LINE, "[PG ID 0 PG GUID 0(default_pg) Rank 0] Watchdog caught collective operation timeout: "
                "WorkNCCL(SeqNum=12, OpType=ALLREDUCE, NumelIn=2, NumelOut=2, Timeout(ms)=600000) ran for 600094 "
                "milliseconds before timing out."),
    (NCCL_LINE, "[PG ID 0 PG GUID 0(default_pg) Rank 0] WorkNCCL(SeqNum=12, OpType=ALLREDUCE, NumelIn=2, NumelOut=2, "
                "Timeout(ms)=600000) timed out in blocking wait."),
])
def test_a_rank_that_lost_its_peer_says_so_in_one_line(monkeypatch, capsys, line, text):
    """The rank whose collective broke because another rank stopped printed a 25-line traceback (gloo's RuntimeError,
    NCCL's DistBackendError) around the other rank's one-line error; NCCL's line says that its texts are also those
    of a hang or a network fault. Outside a distributed run the same error is no user error and keeps its
    traceback."""
    from torch.distributed import DistBackendError

    from classification.engine.cli import run_cli

    def broken_collective():
        raise (RuntimeError if line is GLOO_LINE else DistBackendError)(text)

    monkeypatch.delenv("LOCALMAMBA_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["tools/test.py"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as info:
        run_cli(broken_collective)
    assert (info.value.code, capsys.readouterr().err) == (1, f"{line}{text.splitlines()[0]}\n")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError) as raised:
        run_cli(broken_collective)
    assert str(raised.value) == text
