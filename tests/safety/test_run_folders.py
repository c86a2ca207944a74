"""A run never writes over another: same name refused (first run byte-identical), --overwrite starts afresh,
--resume continues in the checkpoint's own folder, a failed --resume changes nothing."""
import csv
import os
import shutil

import pytest
import torch
import yaml

from safety_helpers import TINY_RUN, assert_one_line_error, digests, run_tool


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A 1-epoch tiny run the resume tests copy into their own folders (they train on in it, or digest it)."""
    out = tmp_path_factory.mktemp("one_epoch")
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(out), "--experiment", "run")
    return out / "run"


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
    shutil.copytree(finished_run, folder)      # a 2-epoch run of the same flags
    (folder / "notes.txt").write_text("mine")
    (folder / "eval_20261202_000000.txt").write_text("tools/test.py's log of the earlier run")
    (folder / "args_original.yaml").write_text("model: local_vim_tiny\n")  # kept by a resume of an original run
    old_logs = sorted(p.name for p in folder.glob("log_*.txt"))
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--keep-num", "1", "--output", str(tmp_path),
             "--experiment", "again", "--overwrite")
    names = sorted(os.listdir(folder))
    assert [r[0] for r in rows(folder / "metrics.csv")] == ["epoch", "0"]
    assert [n for n in names if n.endswith(".pth.tar")] == ["best.pth.tar", "checkpoint-0.pth.tar", "last.pth.tar"]
    assert (folder / "notes.txt").read_text() == "mine"  # only what a run writes is deleted
    assert len(list(folder.glob("log_*.txt"))) == 1 and not set(old_logs) & set(names)
    (log,) = folder.glob("log_*.txt")
    assert "WARNING --overwrite: kept ['notes.txt'], which no run writes" in log.read_text()  # it may be stale
    assert not list(folder.glob("eval_*.txt")) and not (folder / "args_original.yaml").exists()
    assert {r[0] for r in rows(folder / "lr.csv")[1:]} == {"0"}


def test_resume_continues_in_the_checkpoints_own_folder(one_epoch_run, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(one_epoch_run, src)
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(tmp_path), "--experiment", "elsewhere",
             "--resume", str(src / "last.pth.tar"))
    assert not (tmp_path / "elsewhere").exists()
    assert [r[0] for r in rows(src / "metrics.csv")] == ["epoch", "0", "1"]
    assert torch.load(src / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 1


def test_resume_through_a_link_continues_in_the_folder_of_the_checkpoint_it_names(one_epoch_run, tmp_path):
    """A checkpoint given by a symbolic link elsewhere (`ln -s RUN/last.pth.tar latest.pth.tar`): the run went on in
    the link's folder, starting its CSV files and kept checkpoints afresh there, and its own folder stayed behind."""
    src, links = tmp_path / "src", tmp_path / "links"
    shutil.copytree(one_epoch_run, src)
    links.mkdir()
    (links / "latest.pth.tar").symlink_to(src / "last.pth.tar")
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(tmp_path), "--experiment", "src",
             "--resume", str(links / "latest.pth.tar"))
    assert os.listdir(links) == ["latest.pth.tar"]
    assert [r[0] for r in rows(src / "metrics.csv")] == ["epoch", "0", "1"]
    assert torch.load(src / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 1


def test_checkpoints_deleted_to_free_space_keep_the_best(finished_run, tmp_path):
    """`rm checkpoint-*.pth.tar`, keeping best.pth.tar and last.pth.tar, then --resume: best.pth.tar was deleted at
    the resume, or replaced by a worse later epoch. It stays the best epoch's of metrics.csv, the later epoch
    included (here with a learning rate that spoils it)."""
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)      # 2 epochs
    for path in folder.glob("checkpoint-*.pth.tar"):
        path.unlink()
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "3", "--lr", "5", "--resume", str(folder / "last.pth.tar"))
    top1 = {int(row[0]): float(row[3]) for row in rows(folder / "metrics.csv")[1:]}
    best = max(sorted(top1), key=lambda epoch: top1[epoch])                        # ties: the earlier epoch
    assert sorted(top1) == [0, 1, 2]
    assert torch.load(folder / "best.pth.tar", map_location="cpu", weights_only=True)["epoch"] == best
    assert "(file deleted)" in proc.stdout + proc.stderr


def test_overwrite_refuses_to_delete_a_link_in_the_folder_that_is_its_finetune_weights(tmp_path):
    from classification.engine.config import ConfigError
    from classification.engine.experiment import check_overwrite_spares

    (tmp_path / "weights.pth.tar").write_bytes(b"weights")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pth.tar").symlink_to(tmp_path / "weights.pth.tar")
    for given in (tmp_path / "run" / "best.pth.tar", tmp_path / "run" / ".." / "run" / "best.pth.tar"):
        with pytest.raises(ConfigError, match="--overwrite would delete --finetune"):
            check_overwrite_spares(str(tmp_path / "run"), {"--finetune": str(given)})
    check_overwrite_spares(str(tmp_path / "run"), {"--finetune": str(tmp_path / "weights.pth.tar")})


def test_failed_resume_touches_nothing(one_epoch_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
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


def test_convert_never_replaces_its_input_or_an_existing_file(finished_run, tmp_path):
    """tools/convert_ckpt.py IN IN replaced the training checkpoint by its weights alone, and any existing OUT (a
    mistyped last.pth.tar) was replaced without a word."""
    ckpt, other = tmp_path / "last.pth.tar", tmp_path / "other.pth.tar"
    ckpt.write_bytes((finished_run / "last.pth.tar").read_bytes())
    other.write_bytes(b"kept")
    before = digests(tmp_path)
    for dst, extra, message in ((ckpt, [], "is the checkpoint being converted"),
                                (ckpt, ["--overwrite"], "is the checkpoint being converted"),
                                (other, [], f"{other} exists; give another output file, or --overwrite")):
        assert_one_line_error(run_tool("convert_ckpt.py", str(ckpt), str(dst), *extra, check=False), message)
    assert digests(tmp_path) == before
    run_tool("convert_ckpt.py", str(ckpt), str(other), "--overwrite")
    assert list(torch.load(other, weights_only=True))[0] == "state_dict"  # the run's record beside it


@pytest.mark.parametrize("through_link", [False, True])
def test_overwrite_refuses_to_delete_its_own_finetune_weights(finished_run, tmp_path, through_link):
    """--overwrite of the folder that holds the --finetune weights loaded them, then deleted them with the old run;
    so did weights given by a symbolic link elsewhere into the folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("best.pth.tar", "metrics.csv"):
        (folder / name).write_bytes((finished_run / name).read_bytes())
    weights = folder / "best.pth.tar"
    if through_link:
        weights = tmp_path / "weights.pth.tar"
        weights.symlink_to(folder / "best.pth.tar")
    before = digests(folder)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run",
                    "--overwrite", "--finetune", str(weights), check=False)
    assert_one_line_error(proc, f"--overwrite would delete --finetune {weights}, which lies in the run folder")
    assert digests(folder) == before


def test_a_first_epoch_that_crashed_before_its_checkpoint_is_no_run(finished_run, tmp_path):
    """A run that failed in epoch 0 (a broken image) leaves lr.csv rows and no checkpoint: the rerun was refused and
    told to --resume a last.pth.tar that does not exist. Rows past epoch 0 without checkpoints are still a run."""
    first_epoch = [row for row in rows(finished_run / "lr.csv") if row[0] in ("epoch", "0")]
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with open(crashed / "lr.csv", "w", newline="") as f:
        csv.writer(f).writerows(first_epoch)
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "crashed")
    assert [r[0] for r in rows(crashed / "metrics.csv")] == ["epoch", "0"]
    assert rows(crashed / "lr.csv") == rows(finished_run / "lr.csv")[:len(first_epoch)]  # rewritten, same steps
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "metrics.csv").write_bytes((finished_run / "metrics.csv").read_bytes())
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "pruned",
                    check=False)
    assert_one_line_error(proc, f"{pruned} already holds a run (metrics.csv); start afresh there with --overwrite")
    assert "--resume" not in proc.stderr


def test_a_refused_resume_leaves_no_log_file(finished_run, tmp_path):
    """Nothing in the folder changes before the resumed checkpoint has been read and checked: a resume that is
    refused (here: the run has finished its epochs) wrote a log_*.txt into the run's folder."""
    before = digests(finished_run)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "2", "--resume", str(finished_run / "last.pth.tar"),
                    check=False)
    assert_one_line_error(proc, "nothing left to train")
    assert digests(finished_run) == before
    assert "VisionTransformer(" not in proc.stdout  # the model's layout (hundreds of lines) came before the refusal


def test_test_py_refuses_missing_ema_weights_before_evaluating(finished_run, tmp_path):
    """tools/test.py --model-ema on a run trained without EMA evaluated the whole validation set first, then failed
    (a full ImageNet pass lost)."""
    proc = run_tool("test.py", *TINY_RUN, "--resume", str(finished_run / "last.pth.tar"), "--model-ema",
                    "--output", str(tmp_path), check=False)
    assert_one_line_error(proc, "holds no EMA weights (its run was trained without --model-ema)")
    assert "Test: " not in proc.stdout
