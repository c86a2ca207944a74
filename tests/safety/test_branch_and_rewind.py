"""Resuming a checkpoint that is behind its run (an earlier epoch, best.pth.tar) never deletes that run's later work
silently: it is refused unless --rewind; --branch continues from any checkpoint in a new folder. Both continue
exactly."""
import os
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from classification.engine.config import ConfigError, parse_args
from classification.engine.experiment import RunFolder, choose_run_folder
from classification.engine.trainer import train

from safety_helpers import TINY_RUN, assert_one_line_error, digests, run_tool
from training_helpers import assert_same_run, rows, snapshot, tool_env

KILL_AT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_at.py")

RUN = [*TINY_RUN, "--epochs", "3", "--model-ema", "--model-ema-decay", "0.5"]


def run_id(path) -> str:
    """The `run_id` a checkpoint records (None in files written before run ids)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("run_id")


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """A finished 3-epoch run (checkpoint-0..2, last.pth.tar at epoch 2) and its snapshot."""
    out = tmp_path_factory.mktemp("three")
    run_tool("train.py", *RUN, "--output", str(out), "--experiment", "run")
    return out / "run", snapshot(out / "run")


@pytest.fixture
def copy_of_run(three_epochs, tmp_path):
    shutil.copytree(three_epochs[0], tmp_path / "run")
    return tmp_path / "run"


def test_an_earlier_checkpoint_in_its_own_folder_is_refused_and_changes_nothing(copy_of_run):
    before = digests(copy_of_run)
    proc = run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-0.pth.tar"), check=False)
    assert_one_line_error(proc, f"{copy_of_run / 'checkpoint-0.pth.tar'} (epoch 0) is behind the run in "
                                f"{copy_of_run}: its last.pth.tar has gone on to epoch 2")
    assert "--branch --experiment NEW" in proc.stderr and "--rewind" in proc.stderr
    assert digests(copy_of_run) == before


def test_a_branch_continues_exactly_in_a_new_folder_and_leaves_the_run_as_it_is(three_epochs, copy_of_run):
    before = digests(copy_of_run)
    out = copy_of_run.parent
    run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-0.pth.tar"), "--branch", "--output",
             str(out), "--experiment", "branch")
    assert digests(copy_of_run) == before
    branch, original = snapshot(out / "branch"), three_epochs[1]
    # the same flags: the branch retrains epochs 1 and 2 to the bit, with the history of epoch 0 copied
    assert branch["metrics"] == original["metrics"] and branch["lr"] == original["lr"]
    assert all(torch.equal(branch["weights"][k], original["weights"][k]) for k in original["weights"])
    assert branch["files"] == ["best.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar"]
    assert run_id(out / "branch" / "last.pth.tar") not in (None, run_id(copy_of_run / "last.pth.tar"))


def test_a_branch_of_the_latest_checkpoint_goes_on_in_a_new_folder(copy_of_run):
    """--branch forks a run at any checkpoint, its last one included: here two more epochs in a new folder."""
    before = digests(copy_of_run)
    out = copy_of_run.parent
    run_tool("train.py", *RUN, "--epochs", "5", "--resume", str(copy_of_run / "last.pth.tar"), "--branch",
             "--output", str(out), "--experiment", "longer")
    assert digests(copy_of_run) == before
    assert [r[0] for r in rows(out / "longer" / "metrics.csv")] == ["epoch", "0", "1", "2", "3", "4"]
    assert rows(out / "longer" / "metrics.csv")[:4] == rows(copy_of_run / "metrics.csv")


@pytest.mark.parametrize("target", ["taken", "own"])
def test_a_branch_into_a_folder_with_a_run_is_refused(copy_of_run, tmp_path, target):
    shutil.copytree(copy_of_run, tmp_path / "taken")
    before = digests(tmp_path)
    experiment = "taken" if target == "taken" else copy_of_run.name
    proc = run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-1.pth.tar"), "--branch",
                    "--output", str(tmp_path), "--experiment", experiment, check=False)
    reason = "holds a run" if target == "taken" else "is its own"
    assert_one_line_error(proc, f"--branch continues {copy_of_run / 'checkpoint-1.pth.tar'} in a new folder, and "
                                f"{tmp_path / experiment} {reason}: give --experiment NEW")
    assert digests(tmp_path) == before


def test_a_branch_killed_before_its_first_checkpoint_runs_again_with_the_same_command(three_epochs, copy_of_run):
    """A branch SIGKILLed in its first epoch leaves its folder with the copied CSV rows and no checkpoint: the same
    command was refused (the folder "holds a run") until the folder was deleted by hand. It now runs, exactly."""
    out = copy_of_run.parent
    branch = [*RUN, "--resume", str(copy_of_run / "checkpoint-0.pth.tar"), "--branch", "--output", str(out),
              "--experiment", "branch"]
    proc = subprocess.run([sys.executable, KILL_AT, "lr", "1", *branch], capture_output=True, text=True,
                          env=tool_env(), timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert rows(out / "branch" / "metrics.csv") == rows(copy_of_run / "metrics.csv")[:2]
    run_tool("train.py", *branch)
    done, original = snapshot(out / "branch"), three_epochs[1]
    assert done["metrics"] == original["metrics"] and done["lr"] == original["lr"]
    assert all(torch.equal(done["weights"][k], original["weights"][k]) for k in original["weights"])
    assert done["files"] == ["best.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar"]


COPY_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
from classification.engine.experiment import RunFolder, start_branch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
start_branch(RunFolder(sys.argv[1], branch_of=sys.argv[2]))
"""


def test_a_branch_whose_csv_copy_fails_leaves_no_partial_file(tmp_path):
    """The branch's copy of a CSV file that fails halfway (a full disk; a file size limit here) left the rows written
    so far, whose torn last row made the same --branch refused ("holds a run"). The copy is now whole or absent."""
    source, branch = tmp_path / "run", tmp_path / "branch"
    source.mkdir(), branch.mkdir()
    rows_text = "".join(f"{epoch},{step},0.00{step}\n" for epoch in range(40) for step in range(50))
    (source / "lr.csv").write_text("epoch,step,lr\n" + rows_text)
    proc = subprocess.run([sys.executable, "-c", COPY_UNDER_FILE_SIZE_LIMIT, str(branch), str(source), "4096"],
                          capture_output=True, text=True, env=tool_env(), timeout=60)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert os.listdir(branch) == []


def test_a_branch_into_a_folder_of_other_csv_rows_without_checkpoints_is_refused(copy_of_run, tmp_path):
    """CSV rows that are not the history of the run branched from (another run's, its checkpoints deleted) are a run:
    a branch would overwrite them."""
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.csv").write_text("epoch,train_loss,test_loss,top1,top5\n0,1.0,1.0,50.0,90.0\n")
    proc = run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-1.pth.tar"), "--branch",
                    "--output", str(tmp_path), "--experiment", "other", check=False)
    assert_one_line_error(proc, f"{tmp_path / 'other'} holds a run: give --experiment NEW")


@pytest.mark.parametrize("flags, message", [
    (["--rewind"], "--rewind continues a run from one of its checkpoints: give that checkpoint with --resume"),
    (["--branch", "--resume", "auto"], "--branch continues a run from one of its checkpoints"),
    (["--rewind", "--branch", "--resume", "x.pth.tar"], "give only one of them"),
])
def test_rewind_and_branch_need_one_checkpoint(flags, message, tmp_path):
    proc = run_tool("train.py", *RUN, *flags, "--output", str(tmp_path), check=False)
    assert_one_line_error(proc, message)


def test_rewind_continues_exactly_from_the_earlier_checkpoint(three_epochs, copy_of_run):
    """--rewind from epoch 0 retrains epochs 1 and 2: the folder ends as the uninterrupted run left it."""
    (copy_of_run / "notes.txt").write_text("mine")
    started = run_id(copy_of_run / "checkpoint-0.pth.tar")
    run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-0.pth.tar"), "--rewind")
    assert_same_run(snapshot(copy_of_run), three_epochs[1])
    assert (copy_of_run / "notes.txt").read_text() == "mine"
    assert run_id(copy_of_run / "last.pth.tar") == run_id(copy_of_run / "checkpoint-2.pth.tar") == started


def test_rewind_with_nothing_to_rewind_keeps_the_ranks_of_checkpoints_deleted_by_hand(three_epochs, copy_of_run):
    """--rewind of the run's own last.pth.tar rewinds nothing; it turned off what a resume in place does for the
    checkpoint-N files a user deleted (their entries keep their ranks, best.pth.tar stays the best): their entries were
    dropped and best.pth.tar removed. It now continues as a plain --resume, and says so."""
    kept = three_epochs[1]["kept"]
    for name, _ in kept:
        os.remove(copy_of_run / name)
    proc = run_tool("train.py", *RUN, "--epochs", "4", "--resume", str(copy_of_run / "last.pth.tar"), "--rewind")
    assert f"--rewind: nothing to rewind, {copy_of_run / 'last.pth.tar'} is where the run" in proc.stdout
    ranked = torch.load(copy_of_run / "last.pth.tar", map_location="cpu", weights_only=True)["checkpoints"]
    assert sorted(name for name, _ in ranked) == sorted([name for name, _ in kept] + ["checkpoint-3.pth.tar"])
    best = torch.load(copy_of_run / "best.pth.tar", map_location="cpu", weights_only=True)["epoch"]
    assert f"checkpoint-{best}.pth.tar" == ranked[0][0]


def test_a_rewind_with_nothing_to_rewind_leaves_the_given_config_as_it_is(copy_of_run):
    """train() turned the caller's `cfg.rewind` off when there was nothing to rewind (what a resume in place keeps is
    now told by the run folder): a script that trains the same config again then ran another command."""
    cfg = parse_args([*RUN, "--epochs", "4", "--resume", str(copy_of_run / "last.pth.tar"), "--rewind"])
    train(cfg)
    assert cfg.rewind and torch.load(copy_of_run / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 3


def test_a_rewind_killed_in_its_first_epoch_resumes_from_the_rewound_point(three_epochs, copy_of_run):
    """A rewound run's last.pth.tar is the resumed checkpoint from its start: killed in the next epoch's first step,
    it continues from there (not from the later epoch the old last.pth.tar held) and ends exactly."""
    proc = subprocess.run([sys.executable, KILL_AT, "lr", "1", *RUN, "--resume",
                           str(copy_of_run / "checkpoint-0.pth.tar"), "--rewind"], capture_output=True, text=True,
                          env=tool_env(), timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(copy_of_run / "last.pth.tar", map_location="cpu", weights_only=True)["epoch"] == 0
    run_tool("train.py", *RUN, "--resume", str(copy_of_run / "last.pth.tar"))
    assert_same_run(snapshot(copy_of_run), three_epochs[1])


def test_a_rewind_killed_early_keeps_the_list_it_rewound_to(copy_of_run):
    """A rewind drops the kept entries whose files are gone (evicted after the checkpoint by the later epochs it
    rewinds); its last.pth.tar was a plain copy of the checkpoint, still listing them, so a rewind killed early and
    then resumed (which keeps the ranks of missing files: deleted by hand) ranked the new epochs below files that do
    not exist. The rewound point's last.pth.tar now holds the list the rewind kept."""
    os.remove(copy_of_run / "checkpoint-0.pth.tar")   # as if evicted by epoch 2
    listed = torch.load(copy_of_run / "checkpoint-1.pth.tar", map_location="cpu", weights_only=True)["checkpoints"]
    assert sorted(name for name, _ in listed) == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar"]
    proc = subprocess.run([sys.executable, KILL_AT, "lr", "2", *RUN, "--resume",
                           str(copy_of_run / "checkpoint-1.pth.tar"), "--rewind"], capture_output=True, text=True,
                          env=tool_env(), timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = torch.load(copy_of_run / "last.pth.tar", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["checkpoints"] == [item for item in listed if item[0] != "checkpoint-0.pth.tar"]


def test_an_unreadable_last_checkpoint_counts_as_later_work(copy_of_run):
    (copy_of_run / "last.pth.tar").write_bytes(b"PK\x03\x04 truncated by a crash")
    proc = run_tool("train.py", *RUN, "--resume", str(copy_of_run / "checkpoint-1.pth.tar"), check=False)
    assert_one_line_error(proc, "its last.pth.tar cannot be read")


def test_the_latest_checkpoint_by_another_name_continues_in_place(copy_of_run):
    """checkpoint-2 is where last.pth.tar stands: resuming it is no rewind (and here nothing is left to train)."""
    proc = run_tool("train.py", *RUN, "--epochs", "4", "--resume", str(copy_of_run / "checkpoint-2.pth.tar"))
    assert proc.returncode == 0
    assert [r[0] for r in rows(copy_of_run / "metrics.csv")] == ["epoch", "0", "1", "2", "3"]
    assert run_id(copy_of_run / "checkpoint-3.pth.tar") == run_id(copy_of_run / "checkpoint-0.pth.tar") is not None


def test_a_checkpoint_of_another_run_brought_into_the_folder_is_refused_and_changes_nothing(copy_of_run):
    """A copy of another run's checkpoint, as far on as the folder's run (so no rewind), would mix the two runs'
    checkpoints and CSV rows: refused, pointing to --branch."""
    foreign = torch.load(copy_of_run / "checkpoint-2.pth.tar", map_location="cpu", weights_only=True)
    foreign["run_id"] = "another run"
    torch.save(foreign, copy_of_run / "from_the_cluster.pth.tar")
    before = digests(copy_of_run)
    proc = run_tool("train.py", *RUN, "--epochs", "4", "--resume", str(copy_of_run / "from_the_cluster.pth.tar"),
                    check=False)
    assert_one_line_error(proc, f"{copy_of_run / 'from_the_cluster.pth.tar'} is a checkpoint of another run than "
                                f"the one in {copy_of_run} (its last.pth.tar has another run id)")
    assert "--branch --experiment NEW" in proc.stderr
    assert digests(copy_of_run) == before


@pytest.mark.parametrize("flag", ["branch", "rewind"])
def test_branch_and_rewind_refuse_released_weights(flag, tmp_path):
    """Released weights carry no run to continue: --branch / --rewind of one is refused (without them it starts a
    fresh run from the weights)."""
    cfg = Namespace(output=str(tmp_path), experiment="new", resume="weights.pth", trust_checkpoint=False,
                    branch=flag == "branch", rewind=flag == "rewind")
    with pytest.raises(ConfigError, match=f"--{flag} continues a run from one of its training checkpoints; "
                                          f"weights.pth is released weights"):
        choose_run_folder(cfg, {"state_dict": {}})
    cfg.branch = cfg.rewind = False
    assert choose_run_folder(cfg, {"state_dict": {}}) == RunFolder(str(tmp_path / "new"))
