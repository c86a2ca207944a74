"""--resume auto, for a job that runs the same command every time it starts (Slurm --requeue): it continues
<output>/<experiment>/last.pth.tar when there is one and starts the run otherwise."""
import pytest
import torch

from classification.engine.config import ConfigError, parse_args
from classification.engine.trainer import train

from safety_helpers import TINY_RUN
from training_helpers import rows


def train_auto(out, epochs):
    return train(parse_args([*TINY_RUN, "--epochs", str(epochs), "--output", str(out), "--experiment", "run",
                             "--resume", "auto"]))


def test_the_same_command_starts_the_run_then_continues_it(tmp_path):
    folder = tmp_path / "run"
    train_auto(tmp_path, 1)
    first = torch.load(folder / "last.pth.tar", weights_only=True)
    train_auto(tmp_path, 2)
    assert [r[0] for r in rows(folder / "metrics.csv")[1:]] == ["0", "1"]
    last = torch.load(folder / "last.pth.tar", weights_only=True)
    assert last["epoch"] == 1 and not torch.equal(last["model"]["head.weight"], first["model"]["head.weight"])
    logs = "".join(path.read_text() for path in folder.glob("log_*.txt"))
    assert f"--resume auto: continuing {folder / 'last.pth.tar'}" in logs
    assert "--resume auto: no last.pth.tar in" in logs


def test_an_uncommitted_first_epoch_is_started_again(tmp_path):
    """Killed before its first checkpoint, a run leaves rows but nothing to resume: the next start begins afresh."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "lr.csv").write_text("epoch,step,lr\n0,0,0.0001\n0,2,0.0001\n")
    train_auto(tmp_path, 1)
    assert [r[:2] for r in rows(folder / "lr.csv")[1:]] == [["0", "0"], ["0", "2"], ["0", "4"]]


def test_checkpoints_without_last_are_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"epoch": 0}, folder / "checkpoint-0.pth.tar")
    with pytest.raises(ConfigError, match=r"--resume auto: .*run holds checkpoint-0.pth.tar but no last.pth.tar"):
        train_auto(tmp_path, 1)


def test_rows_of_a_later_epoch_without_last_are_refused(tmp_path):
    """Only a first epoch is ever uncommitted: rows past epoch 0 with no last.pth.tar are a run whose checkpoints
    were deleted, and starting afresh would erase its metrics."""
    folder = tmp_path / "run"
    folder.mkdir()
    metrics = "epoch,train_loss,test_loss,top1,top5\n0,2.1,2.0,30.0,80.0\n1,1.5,1.4,60.0,95.0\n"
    (folder / "metrics.csv").write_text(metrics)
    with pytest.raises(ConfigError, match=r"--resume auto: .*run holds metrics.csv \(rows past epoch 0\) but no "
                                          r"last.pth.tar"):
        train_auto(tmp_path, 1)
    assert (folder / "metrics.csv").read_text() == metrics


def test_evaluation_needs_a_path():
    from classification.engine.evaluate import test as evaluate
    with pytest.raises(ConfigError, match="tools/test.py needs --resume CHECKPOINT \\(a path; 'auto' is"):
        evaluate(parse_args([*TINY_RUN, "--resume", "auto"]))


def test_a_finished_run_is_left_as_it_is(tmp_path, capsys):
    """A requeued job that starts after its run has finished prints so and returns (exit status 0): nothing in the
    folder changes. An explicit --resume of that checkpoint is refused (the command asks for more training)."""
    folder = tmp_path / "run"
    train_auto(tmp_path, 1)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    capsys.readouterr()
    assert train_auto(tmp_path, 1) == {}
    assert (f"--resume auto: {folder / 'last.pth.tar'} has finished epoch 0, the last of --epochs 1 (epochs count "
            f"from 0, as the log does): nothing left to train") in capsys.readouterr().out
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    with pytest.raises(ConfigError, match="already finished epoch 0 and --epochs 1 ends the run"):
        train(parse_args([*TINY_RUN, "--epochs", "1", "--resume", str(folder / "last.pth.tar")]))


def test_a_run_gone_past_a_lower_epochs_is_not_said_to_end_there(tmp_path, capsys):
    """A job whose --epochs is lower than the epochs its run has trained: the line says where --epochs ends the run,
    not that the run's last epoch is the last of those --epochs."""
    folder = tmp_path / "run"
    train_auto(tmp_path, 2)
    capsys.readouterr()
    assert train_auto(tmp_path, 1) == {}
    assert (f"--resume auto: {folder / 'last.pth.tar'} has finished epoch 1, past epoch 0, the last of --epochs 1 "
            f"(epochs count from 0, as the log does): nothing left to train") in capsys.readouterr().out
