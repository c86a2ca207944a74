"""--lr and the schedule flags given with --resume take effect: the resumed iterations follow the new schedule; the
log names every flag that changed."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from classification.engine.config import ConfigError, parse_args
from classification.engine.optim import build_optimizer
from classification.engine.resume import check_same_batches, saved_optimizer_kind
from classification.engine.scheduler import WarmupScheduler

from safety_helpers import TINY_RUN, run_tool
from training_helpers import tool_env

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = [*TINY_RUN, "--epochs", "3"]  # lr 3e-3, cosine, 1 warmup epoch from 1e-4, floor 1e-5; 5 iterations per epoch


def test_new_lr_on_resume_takes_effect(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "kill_at.py"), "last", "0", *RUN, "--output",
                           str(tmp_path), "--experiment", "run"], capture_output=True, env=tool_env(), timeout=300)
    assert proc.returncode == -9
    folder = tmp_path / "run"
    log = run_tool("train.py", *RUN, "--lr", "6e-3", "--min-lr", "2e-5", "--smoothing", "0.2", "--resume",
                   str(folder / "last.pth.tar"))
    changes = [line.split("INFO ")[-1].split("] ")[-1] for line in log.stdout.splitlines()
               if "changed on resume" in line]
    # every changed flag is named (not only the optimizer's and the schedule's), and nothing else
    assert changes == ["--lr changed on resume: 0.003 -> 0.006 (the new value is used)",
                       "--min-lr changed on resume: 1e-05 -> 2e-05 (the new value is used)",
                       "--smoothing changed on resume: 0.1 -> 0.2 (the new value is used)"], changes
    new = WarmupScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=6e-3), "cosine", 6e-3, 5, 3,
                          warmup_epochs=1, warmup_lr=1e-4, min_lr=2e-5)
    old = WarmupScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-3), "cosine", 3e-3, 5, 3,
                          warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5)
    with open(folder / "lr.csv", newline="") as f:
        rows = [(int(e), int(t), float(lr)) for e, t, lr in list(csv.reader(f))[1:]]
    assert [e for e, _, _ in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(lr == old.lr_at(t) for e, t, lr in rows if e == 0)
    assert all(lr == new.lr_at(t) and lr != old.lr_at(t) for e, t, lr in rows if e > 0)


def test_a_lower_keep_num_on_resume_names_the_checkpoints_it_deletes(tmp_path):
    """--keep-num lowered at a --resume deleted the checkpoints ranked past it with only '--keep-num changed on
    resume' in the log."""
    run_tool("train.py", *RUN, "--epochs", "2", "--output", str(tmp_path), "--experiment", "run")
    folder = tmp_path / "run"
    ranked = [name for name, _ in torch.load(folder / "last.pth.tar", weights_only=True)["checkpoints"]]
    assert sorted(ranked) == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar"]
    log = run_tool("train.py", *RUN, "--keep-num", "1", "--resume", str(folder / "last.pth.tar")).stdout
    assert (f"--keep-num 1 keeps fewer checkpoints than the run of {folder / 'last.pth.tar'}: those ranked past the "
            f"best 1 are deleted: {folder / ranked[1]}\n") in log, log
    assert not (folder / ranked[1]).exists()


def test_a_path_given_relative_once_and_absolute_once_is_not_a_change(tmp_path, monkeypatch):
    """`-c int.yaml` then `-c /abs/int.yaml` logged '--config changed on resume'; a path to another file still is."""
    import logging

    from classification.engine.config import config_dict, parse_args
    from classification.engine.resume import log_changed_flags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "int.yaml").write_text("lr: 0.001\n")
    (tmp_path / "other.yaml").write_text("lr: 0.001\n")
    saved = config_dict(parse_args(["-c", "int.yaml"]))
    records = []
    log = logging.getLogger("test_resume_flags")
    keep = logging.Handler()
    keep.emit = lambda record: records.append(record.getMessage())
    log.addHandler(keep)
    log.setLevel(logging.INFO)
    log_changed_flags(parse_args(["-c", str(tmp_path / "int.yaml")]), saved, log)
    assert records == []
    log_changed_flags(parse_args(["-c", "other.yaml"]), saved, log)
    assert records == ["--config changed on resume: int.yaml -> other.yaml (the new value is used)"]


MID_EPOCH = {"epoch": 3, "step": 7, "rng": [{"torch": None}], "config": {"batch_size": 32}}


def test_mid_epoch_resume_with_the_same_processes_and_batch_size_is_accepted():
    check_same_batches(MID_EPOCH, "last.pth.tar", world_size=1, batch_size=32)


def test_mid_epoch_resume_with_another_batch_size_is_refused():
    with pytest.raises(ConfigError, match=r"-b 32.*1 with -b 16"):
        check_same_batches(MID_EPOCH, "last.pth.tar", world_size=1, batch_size=16)


def test_mid_epoch_resume_with_another_process_count_is_refused():
    with pytest.raises(ConfigError, match=r"1 process\(es\) with -b 32"):
        check_same_batches(MID_EPOCH, "last.pth.tar", world_size=2, batch_size=32)


def test_mid_epoch_resume_with_other_accumulation_steps_is_refused():
    """The checkpoint's step counts batches and its schedule optimizer steps: another --grad-accum-steps would
    continue the epoch with its schedule at another place (and a step split across the stop)."""
    with pytest.raises(ConfigError, match=r"1 process\(es\) with -b 32 --grad-accum-steps 1; continue it with the "
                                          r"same \(this run: 1 with -b 32 --grad-accum-steps 2\)"):
        check_same_batches(MID_EPOCH, "last.pth.tar", world_size=1, batch_size=32, grad_accum_steps=2)
    accumulated = {**MID_EPOCH, "step": 8, "config": {"batch_size": 32, "grad_accum_steps": 4}}
    check_same_batches(accumulated, "last.pth.tar", world_size=1, batch_size=32, grad_accum_steps=4)
    with pytest.raises(ConfigError, match=r"-b 32 --grad-accum-steps 4; .*\(this run: 1 with -b 32 "
                                          r"--grad-accum-steps 1\)"):
        check_same_batches(accumulated, "last.pth.tar", world_size=1, batch_size=32)


@pytest.mark.parametrize("opt", ["adamw", "sgd", "rmsprop", "rmsproptf"])
def test_the_optimizer_kind_of_a_checkpoint_without_config_is_read_from_its_state(opt):
    """The original code's checkpoints record no --opt: the kind is told by its state's hyperparameters. RMSpropTF's
    groups hold RMSprop's `alpha` too, so its own `lr_in_momentum` must decide first (else --opt rmsproptf read its
    own run as another kind's and started its state afresh)."""
    optimizer = build_optimizer(torch.nn.Linear(2, 2), parse_args(["--opt", opt]))
    assert saved_optimizer_kind({"optimizer": optimizer.state_dict()}) == opt
    assert saved_optimizer_kind({"optimizer": optimizer.state_dict(), "config": {"opt": "sgd"}}) == "sgd"


def test_changed_flags_are_logged_but_those_that_name_the_folder():
    """--output and --experiment name the folder a resumed run continues in whatever they say: not logged as changes;
    another --lr is."""
    from types import SimpleNamespace

    from classification.engine.config import config_dict
    from classification.engine.resume import log_changed_flags

    saved = config_dict(parse_args(["--output", "runs", "--experiment", "a", "--lr", "1e-3"]))
    lines = []
    log_changed_flags(parse_args(["--output", "elsewhere", "--experiment", "b", "--lr", "2e-3"]), saved,
                      SimpleNamespace(info=lines.append))
    assert lines == ["--lr changed on resume: 0.001 -> 0.002 (the new value is used)"]


def test_a_resume_that_switches_kd_off_logs_one_line_for_it_and_the_teacher_flags(tmp_path):
    """--kd switched off: its one line, none for the teacher's flags and loss weights, every one changed (they do
    nothing without --kd); another --kd method: a line for each changed flag; a config recorded without --kd (before
    distillation) compares the flags it holds."""
    from types import SimpleNamespace

    from classification.engine.config import config_dict
    from classification.engine.resume import TEACHER_FLAGS, log_changed_flags

    first, second = str(tmp_path / "t.pth"), str(tmp_path / "u.pth")
    teacher = ["--teacher-model", "vit_tiny_patch16_224", "--teacher-model-kwargs", "depth=2", "--teacher-ckpt",
               first, "--no-teacher-pretrained", "--kd-loss-weight", "2", "--ori-loss-weight", "0.5"]
    saved = config_dict(parse_args(["--kd", "kdt2", *teacher]))

    def changes(argv, saved=saved):
        lines = []
        log_changed_flags(parse_args(argv), saved, SimpleNamespace(info=lines.append))
        return lines

    assert changes([]) == ["--kd changed on resume: kdt2 -> off (the run goes on without distillation, on its own "
                           f"loss alone; the teacher vit_tiny_patch16_224 of {first} is not used)"]
    assert changes(["--kd", "kd", "--teacher-model", "vit_tiny_patch16_224", "--teacher-ckpt", second]) == [
        f"--{flag} changed on resume: {old} -> {new} (the new value is used)" for flag, old, new in (
            ("kd", "kdt2", "kd"), ("kd-loss-weight", 2.0, 1.0), ("ori-loss-weight", 0.5, 1.0),
            ("teacher-ckpt", first, second), ("teacher-model-kwargs", {"depth": 2}, {}),
            ("teacher-pretrained", False, True))]
    recorded_before = {key: value for key, value in saved.items() if key not in TEACHER_FLAGS | {"kd"}}
    assert changes(["--kd", "kd", *teacher, "--lr", "0.125"], recorded_before) == [
        f"--lr changed on resume: {saved['lr']} -> 0.125 (the new value is used)"]
