"""A checkpoint that needs pickle is never unpickled by any tool unless --trust-checkpoint is given."""
import os

import numpy as np
import pytest
import torch

from safety_helpers import TINY_RUN, TRUST_FLAG, assert_one_line_error, run_tool, save_payload_checkpoint


@pytest.fixture()
def payload(tmp_path, finished_run):
    marker = str(tmp_path / "marker")
    path = str(tmp_path / "crafted.pth.tar")
    save_payload_checkpoint(path, marker, like=str(finished_run / "last.pth.tar"))
    return path, marker


def tool_calls(ckpt, tmp_path):
    return {
        "train --resume": ("train.py", *TINY_RUN, "--epochs", "3", "--output", str(tmp_path), "--resume", ckpt),
        "test": ("test.py", *TINY_RUN, "--output", str(tmp_path), "--resume", ckpt),
        "vis_search_prob": ("vis_search_prob.py", ckpt, "--out", str(tmp_path / "vis")),
        "convert_ckpt": ("convert_ckpt.py", ckpt, str(tmp_path / "converted.pth")),
    }


@pytest.mark.parametrize("tool", ["train --resume", "test", "vis_search_prob", "convert_ckpt"])
def test_crafted_checkpoint_runs_no_code(tool, payload, tmp_path):
    ckpt, marker = payload
    script, *args = tool_calls(ckpt, tmp_path)[tool]
    proc = run_tool(script, *args, check=False)
    assert not os.path.exists(marker), "the payload ran"
    assert_one_line_error(proc, f"{ckpt} holds pickled objects")
    assert TRUST_FLAG in proc.stderr
    assert not os.path.exists(tmp_path / "converted.pth") and not os.path.exists(tmp_path / "vis")
    assert not os.path.exists(tmp_path / "exp")  # refused before any run folder or log file was made


def test_the_trust_of_one_command_does_not_pass_to_a_run_of_its_args_yaml(payload, tmp_path):
    """A run started with --trust-checkpoint wrote it into args.yaml: tools/test.py -c that args.yaml unpickled a
    crafted checkpoint without the flag."""
    ckpt, marker = payload
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "trusted", TRUST_FLAG)
    proc = run_tool("test.py", "-c", str(tmp_path / "trusted" / "args.yaml"), "--resume", ckpt, check=False)
    assert not os.path.exists(marker), "the payload ran"
    assert_one_line_error(proc, f"{ckpt} holds pickled objects")


def test_our_checkpoints_load_without_pickle(finished_run):
    for name in ("last.pth.tar", "best.pth.tar", "checkpoint-1.pth.tar"):
        ckpt = torch.load(finished_run / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] in (0, 1) and isinstance(ckpt["rng"][0]["numpy"]["key"], torch.Tensor)


def legacy_checkpoint(finished_run, path):
    """The previous code's form: numpy's RNG state as an ndarray tuple (needs pickle to load), no mid-epoch keys."""
    ckpt = torch.load(finished_run / "checkpoint-0.pth.tar", map_location="cpu", weights_only=True)
    del ckpt["step"], ckpt["train_loss_sums"]
    ckpt["rng"] = [dict(ckpt["rng"][0], numpy=np.random.get_state())]
    ckpt["checkpoints"] = [[str(finished_run / "checkpoint-0.pth.tar"), ckpt["checkpoints"][0][1]]]
    torch.save(ckpt, path)


def test_legacy_checkpoint_is_refused_then_trusted_on_request(finished_run, tmp_path):
    run = tmp_path / "legacy"
    run.mkdir()
    legacy = str(run / "last.pth.tar")
    legacy_checkpoint(finished_run, legacy)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "2", "--resume", legacy, check=False)
    assert_one_line_error(proc, f"if you trust its source, pass {TRUST_FLAG}")
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--resume", legacy, TRUST_FLAG)
    resumed = torch.load(legacy, map_location="cpu", weights_only=True)  # rewritten in the safe form
    assert resumed["epoch"] == 1 and isinstance(resumed["rng"][0]["numpy"], dict)


def test_a_torch_before_1_6_checkpoint_cut_inside_its_pickles_is_named_truncated(tmp_path):
    """Cut inside the pickles that open it, a file of torch < 1.6's format was 'not a PyTorch checkpoint' with torch's
    text (an index out of range, a struct size), or a checkpoint that could run code: pass --trust-checkpoint."""
    from classification.common import CheckpointError, load_checkpoint

    whole = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "epoch": 3}, whole,
               _use_new_zipfile_serialization=False)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    for size in range(1, len(data)):
        cut.write_bytes(data[:size])
        for trust in (False, True):
            with pytest.raises(CheckpointError, match=rf"^{cut} looks truncated \({size:,} bytes, its end is missing"):
                load_checkpoint(str(cut), trust=trust)
    assert torch.equal(load_checkpoint(str(whole))["model"]["w"], torch.ones(2, 3))


def test_a_pickle_that_torch_save_did_not_write_is_no_checkpoint_and_is_not_unpickled(tmp_path):
    """A pickle of another program was a checkpoint that could run code, and --trust-checkpoint unpickled it (running
    what it holds) before torch found that it lacked torch's magic number."""
    import pickle

    from classification.common import CheckpointError, load_checkpoint

    marker = tmp_path / "marker"
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps(RunsCode(str(marker)), protocol=2))
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=rf"^{other} is not a PyTorch checkpoint \(a pickle, but not one "
                                                  rf"torch.save wrote: it does not start with torch's magic number\)$"):
            load_checkpoint(str(other), trust=trust)
    assert not marker.exists()


class RunsCode:
    """Unpickled, it creates the file `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_checkpoint_url_that_cannot_be_fetched_is_named_as_a_download_error(monkeypatch):
    """Offline, a release URL was reported as 'not a PyTorch checkpoint (URLError: ...)'."""
    import urllib.error

    from classification.common import CheckpointError, load_checkpoint

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vim_tiny.ckpt"
    with pytest.raises(CheckpointError, match=rf"^cannot download checkpoint {url}: URLError: <urlopen error \[Errno "
                                              r"-2\] Name or service not known> \(no network here\? download it and "
                                              r"give the local file\)$"):
        load_checkpoint(url)
