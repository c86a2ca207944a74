"""A run never writes over another: same name refused (first run byte-identical), --overwrite starts afresh,
--resume continues in the checkpoint's own folder, a failed --resume changes nothing."""
import csv
import os

import torch
import yaml

from safety_helpers import TINY_RUN, assert_one_line_error, digests, run_tool


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_second_run_with_the_same_name_is_refused_and_changes_nothing(finished_run, tmp_path):
    before = digests(finished_run)
    out = str(finished_run.parent)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--lr", "1e-2", "--output", out, "--experiment", "run",
                    check=False)
    assert_one_line_error(proc, f"{finished_run} already holds a run (best.pth.tar, checkpoint-0.pth.tar")
    assert f"--resume {finished_run / 'last.pth.tar'}" in proc.stderr and "--overwrite" in proc.stderr
    assert digests(finished_run) == before


def test_overwrite_starts_afresh(finished_run, tmp_path):
    folder = tmp_path / "again"
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(tmp_path), "--experiment", "again")
    (folder / "notes.txt").write_text("mine")
    (folder / "eval_20261202_000000.txt").write_text("tools/test.py's log of the earlier run")
    old_logs = sorted(p.name for p in folder.glob("log_*.txt"))
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--keep-num", "1", "--output", str(tmp_path),
             "--experiment", "again", "--overwrite")
    names = sorted(os.listdir(folder))
    assert [r[0] for r in rows(folder / "metrics.csv")] == ["epoch", "0"]
    assert [n for n in names if n.endswith(".pth.tar")] == ["best.pth.tar", "checkpoint-0.pth.tar", "last.pth.tar"]
    assert (folder / "notes.txt").read_text() == "mine"  # only what a run writes is deleted
    assert len(list(folder.glob("log_*.txt"))) == 1 and not set(old_logs) & set(names)
    assert not list(folder.glob("eval_*.txt"))
    assert {r[0] for r in rows(folder / "lr.csv")[1:]} == {"0"}


def test_resume_continues_in_the_checkpoints_own_folder(finished_run, tmp_path):
    src = tmp_path / "src"
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "src")
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(tmp_path), "--experiment", "elsewhere",
             "--resume", str(src / "last.pth.tar"))
    assert not (tmp_path / "elsewhere").exists()
    assert [r[0] for r in rows(src / "metrics.csv")] == ["epoch", "0", "1"]
    assert torch.load(src / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 1


def test_failed_resume_touches_nothing(finished_run, tmp_path):
    run = tmp_path / "run"
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run")
    before = digests(run)
    # another model's shapes: the checkpoint is read and refused before args.yaml or any CSV file is written
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "3", "--model-kwargs", "embed_dim=48",
                    "--resume", str(run / "last.pth.tar"), check=False)
    assert_one_line_error(proc, f"{run / 'last.pth.tar'} does not fit this model")
    after = digests(run)
    new_logs = [k for k in after if k not in before]
    assert all(k.startswith("log_") for k in new_logs) and {k: after[k] for k in before} == before
    with open(run / "args.yaml") as f:
        assert yaml.safe_load(f)["epochs"] == 1


def test_checkpoints_get_the_umask_permissions(tmp_path):
    old = os.umask(0o002)
    try:
        run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "group")
    finally:
        os.umask(old)
    modes = {name: mode & 0o777 for name, (_, mode) in digests(tmp_path / "group").items()}
    assert modes["last.pth.tar"] == modes["best.pth.tar"] == modes["metrics.csv"] == 0o664, modes
