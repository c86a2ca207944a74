"""Bad input gives an error naming the file or key; an interrupted save leaves the previous checkpoint intact."""
import io
import os
import re
import shutil
import signal
import sys

import pytest
import torch
import yaml
from torch import nn

from classification.common import checkpoint_io as ckpt_mod
from classification.common.checkpoint_io import CheckpointError, atomic_save
from classification.data import DataError, build_eval_dataset
from classification.engine.checkpoint import load_weights
from classification.engine.cli import TrainingDiverged, run_cli
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.logs import ProgressBar
from classification.engine.trainer import train

from training_helpers import TINY_MODEL, WrappedFile, make_meta_tree, write_image

TINY_TRAIN = [*TINY_MODEL, "-b", "4", "--epochs", "1", "-j", "0", "--opt", "adamw", "--lr", "1e-3"]


def run(tmp_path, *argv):
    return train(parse_args([*TINY_TRAIN, "--output", str(tmp_path / "out"), *argv]))


def test_missing_data_path(tmp_path):
    with pytest.raises(DataError, match=rf"^data path does not exist: {tmp_path / 'nowhere'} \(set --data-path\)$"):
        run(tmp_path, "--data-path", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=rf"^data path does not exist: data/nowhere \(set --data-path, relative to the "
                                        rf"current directory {os.getcwd()}\)$"):
        run(tmp_path, "--data-path", "data/nowhere")


def test_data_path_without_any_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: expected meta/train.txt"):
        run(tmp_path, "--data-path", str(tmp_path / "empty"))


def test_empty_meta_file(tmp_path):
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=2, per_class=2, val_per_class=1)
    (root / "meta" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=f"meta file is empty: {root / 'meta' / 'val.txt'}"):
        run(tmp_path, "--data-path", str(root))


def test_malformed_meta_line_is_located(tmp_path):
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=2, per_class=2, val_per_class=1)
    with open(root / "meta" / "train.txt", "a") as f:
        f.write("n0001/extra.JPEG cat\n")
    with pytest.raises(DataError, match=rf"{root / 'meta' / 'train.txt'}:5: expected '<relative/path> <label>'"):
        run(tmp_path, "--data-path", str(root))


def test_meta_list_of_another_root_is_refused_before_training(tmp_path):
    """A val.txt whose paths start with val/ (the list of another layout) failed only at validation, after a whole
    training epoch."""
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=2, per_class=2, val_per_class=1)
    val_list = root / "meta" / "val.txt"
    val_list.write_text("".join(f"val/{line}\n" for line in val_list.read_text().split("\n") if line))
    first = val_list.read_text().split()[0]
    with pytest.raises(DataError, match=rf"{val_list}:1: image not found: {root / 'val' / first} \(the list's paths "
                                        rf"are relative to {root / 'val'}\)"):
        run(tmp_path, "--data-path", str(root))
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]  # no log, no CSV file


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so progress bars draw into it."""

    def isatty(self) -> bool:
        return True


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    """On a terminal the epoch's progress bar is cleared before the error is printed (it stayed on the line)."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(4):
            write_image(str(root / "train" / c / f"{i}.png"), seed=i, fmt="PNG")
        write_image(str(root / "val" / c / "0.png"), seed=9, fmt="PNG")
    (root / "train" / "b" / "3.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot read image {root / 'train' / 'b' / '3.png'}"):
        run(tmp_path, "--data-path", str(root))
    assert ProgressBar.active is None and terminal.getvalue().endswith("\r\x1b[K")


def test_unknown_config_key_exits_with_a_message(tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump({"lr": 0.1, "warmup_epoch": 3}))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: parse_args(["-c", str(cfg)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {cfg}: unknown key 'warmup_epoch'; did you mean warmup_epochs?\n"
    cfg.write_text(yaml.safe_dump({"lr": 0.1, "dyrep": True}))  # a flag of the original's left out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: parse_args(["-c", str(cfg)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: {cfg}: key 'dyrep' is True: the original's DyRep is not part of this "
                                       f"code (remove the key, or give it False)\n")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    train(parse_args(["--dataset", "digits", *TINY_TRAIN, "-b", "256", "--output", str(out), "--experiment", "e"]))
    return str(out / "e" / "last.pth.tar")


def test_checkpoint_of_another_model_is_refused(tiny_ckpt, tmp_path):
    other = ["--dataset", "digits", "--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16",
             "patch_size=4", "depth=2", "embed_dim=32", "num_heads=2", "class_token=false", "global_pool=avg",
             "--img-size", "16", "-j", "0", "--output", str(tmp_path)]
    with pytest.raises(CheckpointError, match=rf"{tiny_ckpt} does not fit this model.*missing \(12\): blocks\.1\."):
        evaluate(parse_args([*other, "--resume", tiny_ckpt]))
    with pytest.raises(CheckpointError, match=rf"{tiny_ckpt} does not fit"):
        train(parse_args([*other, "-b", "256", "--epochs", "2", "--resume", tiny_ckpt]))


def test_checkpoint_mismatch_hints_name_the_cause(tiny_ckpt, tmp_path):
    """Only the classifier differs: the hint names --num-classes; position tables and other weights differ (another
    width): no image-size hint (it was given whenever a position table differed); no weights: said so, with the
    file (a filter lost its name)."""
    weights = torch.load(tiny_ckpt, weights_only=True)["model"]
    common = ["--dataset", "digits", *TINY_MODEL, "-j", "0", "--output", str(tmp_path / "eval")]
    cases = {
        "classes": ({**weights, "head.weight": weights["head.weight"][:3], "head.bias": weights["head.bias"][:3]},
                    r"head.weight: \(3, 32\) vs \(10, 32\).*its classifier has 3 classes: give --num-classes 3"),
        "wider": ({k: torch.cat([v, v], dim=-1) if k in ("pos_embed", "patch_embed.proj.bias") else v
                   for k, v in weights.items()},
                  r"shape mismatch \(2\): pos_embed: \(1, 16, 64\) vs \(1, 16, 32\), patch_embed"),
        "empty": ({}, "holds no weights"),
    }
    for name, (state_dict, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"state_dict": state_dict}, path)
        with pytest.raises(CheckpointError, match=rf"{path}.*{message}") as info:
            evaluate(parse_args([*common, "--resume", str(path)]))
        assert "--img-size" not in str(info.value)


def test_evaluation_with_other_inputs_than_the_run_warns_naming_them(tiny_ckpt, tmp_path, capsys):
    """tools/test.py at another crop or interpolation than the checkpoint's run validated with gave other accuracy
    without a word; now a warning names each flag, the run's value and this one. The run's own inputs: no warning."""
    saved = torch.load(tiny_ckpt, weights_only=True)["config"]
    other = {"bilinear": "bicubic", "bicubic": "bilinear"}[saved["interpolation"]]
    flags = ["--dataset", "digits", *TINY_MODEL, "-j", "0", "--output", str(tmp_path), "--resume", tiny_ckpt]
    evaluate(parse_args(flags))
    out = capsys.readouterr().out
    assert "other inputs" not in out
    cfg = parse_args(flags)
    images = len(build_eval_dataset(cfg))
    batch = int(cfg.batch_size * cfg.val_batch_size_multiplier)
    assert (f"Evaluating on the {images} images of digits (val) at --img-size 16, --crop-pct {saved['crop_pct']}, "
            f"--interpolation {saved['interpolation']}, in batches of {batch} on 1 process(es)") in out
    evaluate(parse_args([*flags, "--crop-pct", "0.5", "--interpolation", other]))
    assert (f"{tiny_ckpt} was validated by its run with other inputs than these (--crop-pct {saved['crop_pct']} -> "
            f"0.5, --interpolation {saved['interpolation']} -> {other}): the accuracy is of other images") in \
        capsys.readouterr().out


def test_evaluating_the_ema_of_a_file_without_one_names_the_flag(tiny_ckpt, tmp_path):
    flags = ["--dataset", "digits", *TINY_MODEL, "-j", "0", "--output", str(tmp_path), "--model-ema"]
    released = tmp_path / "released.pth"
    torch.save({"state_dict": torch.load(tiny_ckpt, weights_only=True)["model"]}, released)
    for path, why in ((tiny_ckpt, "holds no EMA weights"), (str(released), "no 'ema_model' weights")):
        with pytest.raises(CheckpointError, match=f"{why}.*: evaluate its weights alone with --no-model-ema"):
            evaluate(parse_args([*flags, "--resume", path]))


def test_missing_or_corrupt_checkpoint(tiny_ckpt, tmp_path):
    flags = ["--dataset", "digits", *TINY_MODEL, "-j", "0", "--output", str(tmp_path)]
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        evaluate(parse_args([*flags, "--resume", str(tmp_path / "nope.pth")]))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path} is a folder, holding no checkpoint file "
                                                        f"(*.pth.tar, *.pth, *.pt, *.ckpt)")):
        evaluate(parse_args([*flags, "--resume", str(tmp_path)]))
    for name in ("checkpoint-3.pth.tar", "last.pth.tar", "released.ckpt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path} is a folder: give a checkpoint file in it, e.g. "
                                                        f"{tmp_path}/last.pth.tar (last.pth.tar, checkpoint-3.pth.tar, "
                                                        f"released.ckpt)")):
        evaluate(parse_args([*flags, "--resume", str(tmp_path)]))
    broken = tmp_path / "broken.pth.tar"
    broken.write_bytes(open(tiny_ckpt, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(f"{broken} looks truncated (1,000 bytes, its end is missing")):
        evaluate(parse_args([*flags, "--resume", str(broken)]))


def test_interrupted_save_keeps_the_last_good_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    target = tmp_path / "last.pth.tar"
    shutil.copy(tiny_ckpt, target)
    good = open(target, "rb").read()

    def dies_half_way(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 5}, str(target))
    monkeypatch.undo()
    assert open(target, "rb").read() == good
    assert os.listdir(tmp_path) == ["last.pth.tar"]
    assert torch.load(target, map_location="cpu", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("error, raised", [(KeyboardInterrupt(), KeyboardInterrupt),
                                           (OSError(28, "No space left on device"), CheckpointError)])
def test_ctrl_c_inside_a_write_of_the_save_is_an_interrupt_not_a_failed_write(tmp_path, monkeypatch, error, raised):
    """torch's stream writer turned the KeyboardInterrupt of a second Ctrl-C, raised in the file's write, into a
    RuntimeError: the run ended with 'cannot write checkpoint ...: unexpected pos' (status 2) instead of 130. A
    write that fails (a full disk) is still a CheckpointError. Either way no temporary file is left."""
    real_fdopen, writes = os.fdopen, []

    class FailingFile(WrappedFile):
        def write(self, data):
            writes.append(len(data))
            if len(writes) == 3:
                raise error
            return self.f.write(data)

    monkeypatch.setattr(ckpt_mod.os, "fdopen", lambda *args: FailingFile(real_fdopen(*args)))
    with pytest.raises(raised):
        atomic_save({"weights": torch.zeros(1000)}, str(tmp_path / "last.pth.tar"))
    assert len(writes) == 3 and os.listdir(tmp_path) == []


def test_directions_file_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="directions file not found: .*missing.yaml"):
        run(tmp_path, "--dataset", "digits", "--directions", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=f"directions file {tmp_path} is a folder: give the directions.yaml in it"):
        run(tmp_path, "--dataset", "digits", "--directions", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"^directions file not found: search/missing.yaml \(relative to the "
                                                rf"current directory {os.getcwd()}\)$"):   # a config's relative path
        run(tmp_path, "--dataset", "digits", "--directions", "search/missing.yaml")


def test_directions_for_a_search_supernet_are_refused_before_the_run_folder(tmp_path):
    from classification.models.directions import LOCAL_VIM_TINY_DIRECTIONS, save_directions

    path = tmp_path / "searched.yaml"
    save_directions(path, LOCAL_VIM_TINY_DIRECTIONS)
    with pytest.raises(ConfigError, match="--directions: local_vim_tiny_search is a search supernet .* takes no "
                                          "directions; train searched directions with local_vim_tiny"):
        train(parse_args(["--dataset", "digits", "--model", "local_vim_tiny_search", "--directions", str(path),
                          "--output", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


def test_mixup_needs_an_even_batch(tmp_path):
    with pytest.raises(ConfigError, match="even batch size, got -b 5"):
        run(tmp_path, "--dataset", "digits", "-b", "5", "--mixup", "0.2")


def test_bad_config_values_are_config_errors():
    with pytest.raises(SystemExit):
        parse_args(["--opt", "lamb"])  # argparse rejects bad command-line choices itself
    with pytest.raises(ConfigError):
        parse_args(["-c", "/nonexistent/config.yaml"])


def test_too_few_batches_for_one_step_are_refused_before_the_run_folder(tmp_path):
    """8 training images in batches of 4 make 2 batches an epoch: not one optimizer step of 3. Without the check the
    epoch trained nothing and the schedule divided by zero steps. The refused run leaves no folder, not even the
    --output folder it created above its run folder (that one was left behind, empty)."""
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=2, per_class=4, val_per_class=1)
    with pytest.raises(DataError, match=r"^8 training images are fewer than --grad-accum-steps 3 batches of 4 on "
                                        r"each of 1 process\(es\): give -b 2 or less \(or fewer --grad-accum-steps\)$"):
        run(tmp_path, "--data-path", str(root), "--grad-accum-steps", "3")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=r"^8 training images are fewer than one batch of 16 on each of 1 "
                                        r"process\(es\): give -b 8 or less$"):
        run(tmp_path, "--data-path", str(root), "-b", "16")
    with pytest.raises(ConfigError, match=r"--grad-accum-steps must be in \[1, inf\), got 0"):
        parse_args(["--grad-accum-steps", "0"])


def test_a_diverging_run_stops_before_its_first_non_finite_step(tmp_path):
    """SGD at lr 1e4 blows the tiny model up within a few steps. The run stops at the first step whose loss is not
    finite, without taking it: last.pth.tar holds finite weights after the steps before it, and no epoch is
    recorded. A run that trained on NaN weights for the rest of its epochs (or stopped at its first step) fails.
    Resuming last.pth.tar meets the same loss at the same step whatever the --lr (the same weights and batch), so the
    advice is an earlier epoch's checkpoint with --rewind, which then trains on."""
    out, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    common = ["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", "2", "-j", "0", "--opt", "sgd",
              "--warmup-epochs", "0", "--output", str(out), "--experiment", "run"]
    with pytest.raises(TrainingDiverged, match=r"the training loss is (nan|inf) in epoch 0 after step \d+ of 22 "
                                               r"\(the step was not taken; .* holds the run before it\): --resume "
                                               r".*last.pth.tar would meet the same loss again \(the same weights and "
                                               r"batch\), so continue from a fresh run \(no epoch checkpoint was "
                                               r"kept\) with a lower --lr or --clip-grad-norm$") as stop:
        train(parse_args([*common, "--lr", "1e4"]))
    step = int(str(stop.value).split(" after step ")[1].split()[0])
    ckpt = torch.load(run_dir / "last.pth.tar", map_location="cpu", weights_only=True)
    assert 0 < step < 22 and (ckpt["epoch"], ckpt["step"], ckpt["scheduler"]["t"]) == (0, step, step)
    assert all(torch.isfinite(value).all() for value in ckpt["model"].values())
    assert (run_dir / "metrics.csv").read_text().count("\n") == 1   # the header alone
    with pytest.raises(TrainingDiverged, match=rf" in epoch 0 after step {step} of 22 "):
        train(parse_args([*common, "--lr", "1e-3", "--resume", str(run_dir / "last.pth.tar")]))

    shutil.rmtree(run_dir)
    train(parse_args([*common, "--lr", "0.05", "--epochs", "1"]))
    earlier = run_dir / "checkpoint-0.pth.tar"
    with pytest.raises(TrainingDiverged, match=re.escape(f"so continue from --resume {earlier} --rewind (the end of "
                                                         f"epoch 0) with a lower --lr")):
        train(parse_args([*common, "--lr", "1e4", "--resume", str(run_dir / "last.pth.tar")]))
    train(parse_args([*common, "--lr", "0.05", "--resume", str(run_dir / "checkpoint-0.pth.tar"), "--rewind"]))
    assert [row.split(",")[0] for row in (run_dir / "metrics.csv").read_text().splitlines()] == ["epoch", "0", "1"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals; loader workers forked with the test's patch")
def test_a_killed_loader_worker_ends_the_run_in_one_line_naming_what_is_saved(tmp_path, monkeypatch):
    """A loader worker killed (the out-of-memory killer's usual victim) ended the run in torch's traceback; now in one
    line naming the cause and the first epoch's last.pth.tar to continue from."""
    from classification.data.small_datasets import ArrayImageDataset
    read, reads = ArrayImageDataset.__getitem__, []

    def killed_in_the_second_epoch(dataset, index):
        reads.append(index)   # in the worker: one list per persistent worker process, over the epochs
        if torch.utils.data.get_worker_info() is not None and len(dataset) > 1000 and len(reads) > len(dataset):
            os.kill(os.getpid(), signal.SIGKILL)
        return read(dataset, index)

    monkeypatch.setattr(ArrayImageDataset, "__getitem__", killed_in_the_second_epoch)
    out = tmp_path / "out"
    last = out / "run" / "last.pth.tar"
    with pytest.raises(DataError, match=rf"^DataLoader worker \(pid\(?s?\)? \d+\) (is killed by signal: Killed|exited "
                                        rf"unexpectedly).*: a data loader process died, most often killed by the "
                                        rf"system's out-of-memory killer \(`dmesg` says\); fewer -j or a smaller -b "
                                        rf"take less memory; {re.escape(str(last))} holds the run up to epoch 0; the "
                                        rf"training after it is lost: --resume {re.escape(str(last))} continues from "
                                        rf"there$"):
        train(parse_args(["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", "2", "-j", "1", "--output",
                          str(out), "--experiment", "run"]))
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0


def test_only_torchs_error_for_a_dead_loader_worker_is_taken_for_one():
    from classification.data.loader import lost_worker
    assert lost_worker(RuntimeError("DataLoader worker (pid(s) 41, 42) exited unexpectedly")).startswith(
        "DataLoader worker (pid(s) 41, 42) exited unexpectedly: a data loader process died, most often killed by ")
    assert lost_worker(RuntimeError("CUDA out of memory")) is None
    assert lost_worker(ValueError("DataLoader worker (pid 4) is killed by signal: Killed.")) is None


def test_a_dead_loader_workers_error_becomes_a_data_error_naming_what_is_saved_only_when_asked():
    """tools/test.py's evaluation raises the one line alone; the training adds what is saved, read only then."""
    from classification.data.loader import lost_worker, lost_worker_as_data_error
    dead = RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed.")
    with pytest.raises(DataError) as alone, lost_worker_as_data_error():
        raise dead
    assert str(alone.value) == lost_worker(dead) and alone.value.__cause__ is None
    with pytest.raises(DataError) as saved, lost_worker_as_data_error(saved=lambda: "epoch 0 is saved"):
        raise dead
    assert str(saved.value) == f"{lost_worker(dead)}; epoch 0 is saved"
    asked = []
    with pytest.raises(RuntimeError, match="^CUDA out of memory$"), \
            lost_worker_as_data_error(saved=lambda: asked.append(1) or ""):
        raise RuntimeError("CUDA out of memory")
    assert asked == []


def nan_training_losses(monkeypatch, steps):
    """The training losses (those computed with gradients) of the steps in `steps` (0-based calls) are NaN."""
    calls, forward = [], nn.CrossEntropyLoss.forward

    def maybe_nan(module, logits, target):
        loss = forward(module, logits, target)
        if torch.is_grad_enabled():
            calls.append(len(calls))
            if calls[-1] in steps:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", maybe_nan)


FP16_RUN = ["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", "1", "-j", "0", "--opt", "adamw", "--lr",
            "1e-3", "--warmup-epochs", "0", "--amp", "--amp-dtype", "float16", "--experiment", "run"]


def test_under_a_grad_scaler_a_step_with_a_non_finite_loss_is_skipped(tmp_path, monkeypatch):
    """fp16 with its GradScaler: a NaN loss in step 5 gives NaN gradients, which the scaler skips (halving its scale,
    as in the original's runs); the run goes on, and the NaN stays out of the epoch's train loss."""
    nan_training_losses(monkeypatch, {5})
    metrics = train(parse_args([*FP16_RUN, "--output", str(tmp_path)]))
    (log,) = (tmp_path / "run").glob("log_*.txt")
    assert ("WARNING The training loss is not finite in epoch 0 after step 5 of 22: the GradScaler skips the step (1 "
            "in a row; the run stops at 10)\n") in log.read_text()
    ckpt = torch.load(tmp_path / "run" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["scaler"]["scale"] == 2.0 ** 15   # 2 ** 16 halved once (no growth before 2000 good steps)
    assert all(torch.isfinite(value).all() for value in ckpt["model"].values())
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_a_resumed_fp16_run_keeps_the_grad_scalers_scale(tmp_path, monkeypatch):
    """The scale a GradScaler halved on an overflow is restored on --resume, not started again at 2 ** 16 (which
    would overflow again at once where the run had learnt to avoid it)."""
    nan_training_losses(monkeypatch, {5})
    train(parse_args([*FP16_RUN, "--output", str(tmp_path)]))
    last = tmp_path / "run" / "last.pth.tar"
    assert torch.load(last, map_location="cpu", weights_only=True)["scaler"]["scale"] == 2.0 ** 15
    train(parse_args([*FP16_RUN, "--output", str(tmp_path), "--epochs", "2", "--resume", str(last)]))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["scaler"]["scale"]) == (1, 2.0 ** 15)   # no growth before 2000 good steps


def test_a_loss_not_finite_at_an_epochs_first_step_names_no_checkpoint_of_the_same_weights(tmp_path, monkeypatch):
    """At the first step of epoch 1 last.pth.tar is the end of epoch 0, and so is checkpoint-0: rewinding to it would
    meet the same loss again. The advice names only an earlier epoch's checkpoint (here none)."""
    out = tmp_path / "out"
    nan_training_losses(monkeypatch, {22})   # 22 steps an epoch: the first of epoch 1
    with pytest.raises(TrainingDiverged, match=r"in epoch 1 after step 0 of 22 .*continue from a fresh run \(no "
                                               r"epoch checkpoint was kept\)"):
        train(parse_args(["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", "2", "-j", "0", "--opt",
                          "adamw", "--lr", "1e-3", "--warmup-epochs", "0", "--output", str(out), "--experiment",
                          "run"]))
    assert (out / "run" / "checkpoint-0.pth.tar").exists()


def test_under_a_grad_scaler_ten_non_finite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
    nan_training_losses(monkeypatch, set(range(3, 22)))
    with pytest.raises(TrainingDiverged, match=r"the training loss is nan in epoch 0 after step 12 of 22, 10 steps "
                                               r"in a row \(the step was not taken.* or --resume .*last.pth.tar with "
                                               r"--amp-dtype bfloat16 or without --amp$"):
        train(parse_args([*FP16_RUN, "--output", str(tmp_path)]))
    ckpt = torch.load(tmp_path / "run" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (ckpt["step"], ckpt["scaler"]["scale"]) == (12, 2.0 ** 16 / 2 ** 9)   # 9 steps skipped before


def test_under_a_grad_scaler_non_finite_steps_apart_never_stop_the_run(tmp_path, monkeypatch):
    """Ten steps with a NaN loss, each followed by a finite one (steps 1, 3, ..., 19 of 22): each is skipped as the
    first in a row, and the run finishes, its scale halved ten times. Counting them over the epoch, not in a row,
    stopped it at the tenth, where fp16 runs that overflow now and then go on."""
    nan_training_losses(monkeypatch, set(range(1, 20, 2)))
    metrics = train(parse_args([*FP16_RUN, "--output", str(tmp_path)]))
    (log,) = (tmp_path / "run").glob("log_*.txt")
    assert log.read_text().count("the GradScaler skips the step (1 in a row; the run stops at 10)") == 10
    ckpt = torch.load(tmp_path / "run" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["scaler"]["scale"] == 2.0 ** 16 / 2 ** 10
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


class PositionTables(nn.Module):
    """A position table and a RoPE table of 4 tokens of width 8, and a head."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.rope = nn.Module()
        self.rope.register_buffer("freqs_cos", torch.zeros(4, 8))
        self.head = nn.Linear(8, 2)


def test_a_mismatch_lists_five_keys_of_each_kind_then_an_ellipsis():
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(7)])
    with pytest.raises(CheckpointError, match=r"^w.pth does not fit this model \(another model\?\): missing \(5\): "
                                              r"2.weight, 3.weight, 4.weight, 5.weight, 6.weight$"):
        load_weights(model, {f"{i}.weight": torch.zeros(1, 1) for i in range(2)}, "w.pth")
    with pytest.raises(CheckpointError, match=r": missing \(6\): 1.weight, 2.weight, 3.weight, 4.weight, 5.weight, "
                                              r"\.\.\.; unexpected \(1\): other$"):
        load_weights(model, {"0.weight": torch.zeros(1, 1), "other": torch.zeros(1)}, "w.pth")


@pytest.mark.parametrize("change, hint", [
    ({"pos_embed": torch.zeros(1, 9, 8)}, True),                                     # more tokens, same width
    ({"pos_embed": torch.zeros(1, 9, 8), "rope.freqs_cos": torch.zeros(9, 16)}, False),  # one table is wider
    ({"pos_embed": torch.zeros(1, 9, 8), "extra": torch.zeros(1)}, False),           # and a key the model lacks
])
def test_the_image_size_hint_only_where_position_tables_alone_differ_in_length(change, hint):
    """The --img-size hint is for weights of the same model at another image size: only position tables differ,
    each in its token count alone; another width or an unexpected key is another model."""
    model = PositionTables()
    with pytest.raises(CheckpointError, match="does not fit this model") as info:
        load_weights(model, {**model.state_dict(), **change}, "w.pth")
    assert ("give the --img-size it was trained at" in str(info.value)) == hint
