"""Several nodes, pretended on one machine: processes started by hand with RANK / LOCAL_RANK / WORLD_SIZE as torchrun
sets them on two nodes of one process each, each "node" with its own --output folder where their disks are not
shared (only rank 0 writes the run's files)."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from classification.engine.checkpoint import CheckpointManager
from classification.engine.stopping import saved_so_far

from training_helpers import (READ_FAILS_AT_SCRIPT, REPO, SIGNAL_AT_SCRIPT, TINY_MODEL, free_port, make_folder_tree,
                              tool_env)

RECIPE = {"dataset": "digits", "epochs": 1, "opt": "sgd", "lr": 0.05, "warmup_epochs": 0, "workers": 0,
          "log_interval": 10}
SKIP_ON_WINDOWS = pytest.mark.skipif(os.name == "nt", reason="gloo processes with POSIX signals")


def two_nodes(config, outputs, *flags, timeout=120, **env):
    """tools/train.py (signal_at.py when SIGNAL_AT is given, read_fails_at.py for READ_FAILS_AT) as ranks 0 and 1 of
    two one-process nodes, rank r writing into outputs[r]; their (exit status, stderr) pairs, the stdout of each in
    outputs[r]/stdout<r>.txt. A rank still running after `timeout` s is killed."""
    port = str(free_port())
    script = (SIGNAL_AT_SCRIPT if "SIGNAL_AT" in env else READ_FAILS_AT_SCRIPT if "READ_FAILS_AT" in env
              else os.path.join(REPO, "tools", "train.py"))
    for output in outputs:
        output.mkdir(exist_ok=True)
    logs = [open(output / f"stdout{rank}.txt", "w") for rank, output in enumerate(outputs)]
    procs = [subprocess.Popen([sys.executable, script, "-c", str(config), *TINY_MODEL, "-b", "16", "--output",
                               str(outputs[rank]), "--experiment", "run", *flags], cwd=REPO, text=True,
                              stdout=logs[rank], stderr=subprocess.PIPE,
                              env={**tool_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
                                   "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                                   "GROUP_RANK": str(rank), **env})
             for rank in (0, 1)]
    results = []
    try:
        for proc in procs:
            try:
                results.append((proc.wait(timeout=timeout), proc.stderr.read()))
            except subprocess.TimeoutExpired:
                results.append(("hung", ""))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stderr.close()
        for log in logs:
            log.close()
    return results


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@SKIP_ON_WINDOWS
def test_resume_auto_on_nodes_that_do_not_share_the_folder_is_one_line_on_every_rank(config, tmp_path):
    """Stopped by SIGTERM, a run of two nodes with unshared disks has its last.pth.tar on node 0 only. `--resume auto`
    continued it on node 0 and started the run afresh on node 1: the ranks trained different steps and waited for
    each other in collectives that did not match, forever."""
    outputs = [tmp_path / "node0", tmp_path / "node1"]
    stopped = two_nodes(config, outputs, SIGNAL_AT="SIGTERM step 5", SIGNAL_RANK="1")
    assert [status for status, _ in stopped] == [143, 143], stopped
    last = outputs[0] / "run" / "last.pth.tar"
    assert last.is_file() and not (outputs[1] / "run").exists()
    resumed = two_nodes(config, outputs, "--resume", "auto", timeout=60)
    host = os.uname().nodename
    line = (f"error: --resume: the processes do not read the same checkpoint (rank 0 on {host}: reads {last} (epoch "
            f"0, step 5, run {torch.load(last, weights_only=True)['run_id']}); rank 1 on {host}: --resume auto: no "
            f"last.pth.tar in {outputs[1] / 'run'}, starting the run): every node must read the same run folder and "
            f"checkpoint; give --output and --resume paths on a file system that all nodes share\n")
    assert resumed == [(2, line), (2, line)]
    assert not (outputs[1] / "run").exists()


@SKIP_ON_WINDOWS
def test_a_batch_unread_on_another_node_names_the_checkpoint_that_rank_0_saved(config, tmp_path):
    """Rank 1, on a node that does not share rank 0's disk, cannot read its batch after step 5: both ranks save (rank
    0 writes) and stop. Rank 1 logged `...; nothing was trained yet`, as its own disk holds no last.pth.tar."""
    outputs = [tmp_path / "node0", tmp_path / "node1"]
    cut = two_nodes(config, outputs, READ_FAILS_AT="5 1")
    assert [status for status, _ in cut] == [2, 2], cut
    last = outputs[0] / "run" / "last.pth.tar"
    line = (f"Reading the training data of epoch 0 failed after step 5 of 44; its training up to step 5 is saved: "
            f"once the cause is fixed, continue with --resume {last}")
    assert [line in (output / f"stdout{rank}.txt").read_text() for rank, output in enumerate(outputs)] == [True, True]
    assert torch.load(last, weights_only=True)["step"] == 5


def test_what_is_saved_is_said_alike_on_a_rank_whose_node_does_not_share_the_checkpoints(tmp_path):
    """A run that stops without saving (a dead loader worker) says what last.pth.tar holds; a rank that does not write
    (enabled=False), on a node whose disk has no copy of rank 0's file, said `nothing was saved yet`."""
    for enabled in (True, False):
        manager = CheckpointManager(str(tmp_path / str(enabled)), enabled=enabled)
        (tmp_path / str(enabled)).mkdir()
        run = SimpleNamespace(manager=manager, cfg=SimpleNamespace(grad_accum_steps=1))
        assert saved_so_far(run) == "nothing was saved yet"
        manager.save_last({"epoch": 0, "step": 7})
        last = manager.path("last.pth.tar")
        assert saved_so_far(run) == f"{last} holds the run up to after step 7 of epoch 0; the training after it is lost"
        manager.update(0, 50.0, {"epoch": 0, "step": None})
        assert saved_so_far(run, resume_hint=True) == (f"{last} holds the run up to epoch 0; the training after it is "
                                                       f"lost: --resume {last} continues from there")


@SKIP_ON_WINDOWS
def test_two_nodes_sharing_the_folder_stop_on_a_signal_to_one_and_resume_auto(config, tmp_path):
    """Nodes that share the run folder: SIGTERM to node 1's rank stops both at the same step (rank 0 saves), and
    `--resume auto` on both continues that run to its end."""
    outputs = [tmp_path / "shared", tmp_path / "shared"]
    stopped = two_nodes(config, outputs, SIGNAL_AT="SIGTERM step 5", SIGNAL_RANK="1")
    assert [status for status, _ in stopped] == [143, 143], stopped
    last = outputs[0] / "run" / "last.pth.tar"
    assert torch.load(last, weights_only=True)["step"] == 5
    resumed = two_nodes(config, outputs, "--resume", "auto")
    assert [status for status, _ in resumed] == [0, 0], resumed
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["step"], len(saved["rng"])) == (0, None, 2)
    assert (outputs[0] / "run" / "metrics.csv").read_text().splitlines()[1].startswith("0,")


def tiny_weights(path):
    """Released weights ({'state_dict'}) of TINY_MODEL for the 10 digits classes, written to `path`."""
    import timm
    model = timm.create_model(TINY_MODEL[1], num_classes=10, img_size=16, patch_size=4, depth=1, embed_dim=32,
                              num_heads=2, class_token=False, global_pool="avg")
    torch.save({"state_dict": model.state_dict()}, path)


def two_nodes_in_own_folders(nodes, tool, *args, node_env=({}, {})):
    """tools/`tool` with `args` as ranks 0 and 1 of two one-process nodes, rank r in the folder nodes[r] (a relative
    path names a file of its own node's disk) with node_env[r] added to its environment; their (exit status, stderr)
    pairs."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tools", tool), *TINY_MODEL, "-b", "16", *args],
                              cwd=nodes[rank], text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**tool_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
                                   "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", **node_env[rank]})
             for rank in (0, 1)]
    try:
        return [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stderr.close()


@SKIP_ON_WINDOWS
@pytest.mark.parametrize("tool, flag", [("test.py", "--resume"), ("train.py", "--finetune")])
def test_weights_that_one_node_lacks_are_one_line_on_every_rank(tmp_path, tool, flag):
    """tools/test.py --resume (or tools/train.py --finetune) of a file on node 0's disk only (the same relative path,
    each node in its own folder): rank 1 stopped on it, and rank 0 went on to wait for rank 1 in its next collective
    (gloo ended it on the lost peer, NCCL waits for its timeout)."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    tiny_weights(nodes[0] / "weights.pth")
    ended = two_nodes_in_own_folders(nodes, tool, "--dataset", "digits", "--workers", "0", "--epochs", "1",
                                     "--output", "out", flag, "weights.pth")
    host = os.uname().nodename
    line = (f"error: {flag}: the processes do not read the same checkpoint (rank 0 on {host}: reads the weights "
            f"weights.pth; rank 1 on {host}: checkpoint not found: weights.pth): every node must read the same run "
            f"folder and checkpoint; give --output and {flag} paths on a file system that all nodes share\n")
    assert ended == [(2, line), (2, line)]


@SKIP_ON_WINDOWS
@pytest.mark.parametrize("tool", ["train.py", "test.py"])
def test_data_that_one_node_lacks_stops_every_rank_in_one_line(tmp_path, tool):
    """--data-path of a folder on node 0's disk only: rank 1 stopped on it while building its data, and rank 0 went on
    to wait for it in its next collective (DistributedDataParallel's construction, or the validation's sums), which
    gloo ended on the lost peer and NCCL only at its timeout. Rank 1 raises its own error, rank 0 names it."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
        tiny_weights(node / "weights.pth")
    make_folder_tree(str(nodes[0] / "data"), classes=[str(digit) for digit in range(10)], per_class=4)
    evaluate = ["--resume", "weights.pth"] if tool == "test.py" else []
    ended = two_nodes_in_own_folders(nodes, tool, "--data-path", "data", "--workers", "0", "--epochs", "1",
                                     "--output", "out", *evaluate)
    missing = f"data path does not exist: data (set --data-path, relative to the current directory {nodes[1]})"
    host = os.uname().nodename
    assert ended == [(2, f"error: rank 1 on {host} failed while setting up its data and model, so every rank stops: "
                         f"{missing}\n"), (2, f"error: {missing}\n")]


@SKIP_ON_WINDOWS
@pytest.mark.parametrize("tool", ["train.py", "test.py"])
def test_a_kernel_setting_that_one_node_refuses_stops_every_rank_in_one_line(tmp_path, tool):
    """A C compiler ($CC) that node 1 lacks: rank 1 stopped on it before the first collective (the read of the
    checkpoints), where rank 0 waited for it."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
        tiny_weights(node / "weights.pth")
    evaluate = ["--resume", "weights.pth"] if tool == "test.py" else []
    ended = two_nodes_in_own_folders(nodes, tool, "--dataset", "digits", "--workers", "0", "--epochs", "1", "--output",
                                     "out", *evaluate, node_env=({}, {"CC": "/nowhere/cc"}))
    refused = "CC='/nowhere/cc' is not an executable C compiler"
    host = os.uname().nodename
    assert ended[0][0] == 2 and ended[0][1].startswith(
        f"error: rank 1 on {host} failed while checking its settings, so every rank stops: {refused}")
    assert ended[1][0] == 2 and ended[1][1].startswith(f"error: {refused}")


@SKIP_ON_WINDOWS
def test_a_checkpoint_whose_classes_one_node_lacks_stops_every_rank_in_one_line(tmp_path):
    """--resume of a run whose class folders node 1's data names otherwise: rank 1 refused the checkpoint after
    DistributedDataParallel's construction, and rank 0 went on to train, waiting for it in the first step."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node, classes in zip(nodes, (("cat", "dog", "eel"), ("cat", "dog", "fox"))):
        make_folder_tree(str(node / "data"), classes=classes, per_class=11)
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), *TINY_MODEL, "-b", "16", "--data-path",
                    "data", "--workers", "0", "--epochs", "1", "--output", "out", "--experiment", "run"],
                   cwd=nodes[0], env=tool_env(), check=True, capture_output=True, timeout=300)
    (nodes[1] / "out" / "run").mkdir(parents=True)
    (nodes[1] / "out" / "run" / "last.pth.tar").write_bytes((nodes[0] / "out" / "run" / "last.pth.tar").read_bytes())
    ended = two_nodes_in_own_folders(nodes, "train.py", "--data-path", "data", "--workers", "0", "--epochs", "2",
                                     "--output", "out", "--resume", "out/run/last.pth.tar")
    refused = ("out/run/last.pth.tar was trained on other class folders than those of the data (added ['fox'], removed "
               "['eel']): its labels would change meaning; restore the folders or start a new run (--finetune "
               "out/run/last.pth.tar)")
    host = os.uname().nodename
    assert ended == [(2, f"error: rank 1 on {host} failed while applying --resume, so every rank stops: {refused}\n"),
                     (2, f"error: {refused}\n")]


@SKIP_ON_WINDOWS
def test_a_run_folder_that_rank_0_cannot_write_stops_every_rank_in_one_line(tmp_path):
    """A folder where rank 0 writes args.yaml: rank 0 stopped on it after the set-up, while rank 1 went on to train,
    waiting for it in the first step (gloo ended that on the lost peer, NCCL waits for its timeout). Rank 0's line
    names args.yaml, not the temporary file whose rename failed."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    (nodes[0] / "out" / "run" / "args.yaml").mkdir(parents=True)
    ended = two_nodes_in_own_folders(nodes, "train.py", "--dataset", "digits", "--workers", "0", "--epochs", "1",
                                     "--output", "out", "--experiment", "run")
    refused = "Is a directory: out/run/args.yaml"
    host = os.uname().nodename
    assert ended == [(2, f"error: {refused}\n"),
                     (2, f"error: rank 0 on {host} failed while opening the run folder, so every rank stops: "
                         f"{refused}\n")]


def test_a_set_up_error_is_named_by_the_first_rank_that_met_it_on_the_ranks_that_did_not(monkeypatch):
    """Four ranks, ranks 1 and 3 failing in their set-up (each on its own node): ranks 0 and 2 name rank 1, the first,
    its host and its error's first line; a failing rank raises its own error as it is, and an error without text (a
    bare KeyError()) is named by its type, not lost to an IndexError. Every rank's report gathered is faked."""
    from classification.engine import distributed
    from classification.engine.config import ConfigError

    others = [("node0", None), ("node1", "data path does not exist: data"), ("node0", None), ("node1", "KeyError")]
    sent = []

    def gather_as(rank):
        def gather(report):
            sent.append(report)
            return [report if index == rank else other for index, other in enumerate(others)]
        return gather

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.socket, "gethostname", lambda: "here")
    for rank in (0, 2):
        monkeypatch.setattr(distributed, "all_gather_objects", gather_as(rank))
        with pytest.raises(ConfigError) as stopped:
            with distributed.agreed_setup("setting up its data and model"):
                pass
        assert str(stopped.value) == ("rank 1 on node1 failed while setting up its data and model, so every rank "
                                      "stops: data path does not exist: data")
    monkeypatch.setattr(distributed, "all_gather_objects", gather_as(3))
    missing = KeyError()
    with pytest.raises(KeyError) as raised:
        with distributed.agreed_setup("applying --resume"):
            raise missing
    assert raised.value is missing
    monkeypatch.setattr(distributed, "all_gather_objects", gather_as(1))
    with pytest.raises(ConfigError) as refused:
        distributed.share_refusal(ConfigError("data path does not exist: data\n(set --data-path)"))
    assert str(refused.value) == "data path does not exist: data"
    assert sent == [("here", None), ("here", None), ("here", "KeyError"), ("here", "data path does not exist: data")]


def fake_url_reads(monkeypatch, tmp_path) -> list:
    """torch.hub's URL read faked by a local file of weights {'w': ones(2)}; returns the list each read appends
    "read" to."""
    saved = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, saved)
    events = []

    def cached_download(url, map_location=None, weights_only=True):
        events.append("read")
        return torch.load(saved, map_location=map_location, weights_only=weights_only)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", cached_download)
    return events


@pytest.mark.parametrize("flag", ["--resume", "--finetune"])
def test_the_second_process_of_a_node_reads_a_checkpoint_url_after_the_first_downloaded_it(monkeypatch, tmp_path,
                                                                                           flag):
    """tools/train.py's --resume and --finetune with a URL: the node's LOCAL_RANK 0 downloads into torch.hub's
    cache while the others wait at a barrier, then they read the cached copy (every process downloaded it at once)."""
    import torch.distributed as dist

    from classification.engine import trainer

    events = fake_url_reads(monkeypatch, tmp_path)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: events.append("barrier"))
    url = "https://example.org/weights.pth"
    cfg = SimpleNamespace(resume=url if flag == "--resume" else "", finetune=url if flag == "--finetune" else "",
                          trust_checkpoint=False)
    for local_rank, expected in (("1", ["barrier", "read"]), ("0", ["read", "barrier"])):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        events.clear()
        read = (trainer._read_resume_checkpoint(cfg) if flag == "--resume"
                else trainer._read_finetune_checkpoint(cfg, None))
        assert events == expected and read[0] == url and torch.equal(read[2]["state_dict"]["w"], torch.ones(2))


def test_tools_test_py_reads_a_checkpoint_url_after_the_first_process_of_the_node_downloaded_it(monkeypatch, tmp_path):
    """tools/test.py --resume URL, as tools/train.py's: the node's second process (LOCAL_RANK 1) waits at the barrier
    and then reads torch.hub's cached copy, where every process downloaded it at once. The second process of a
    two-process node is faked around the read (the rest of the tool runs as one process)."""
    import torch.distributed as dist

    from classification.engine import evaluate
    from classification.engine.config import parse_args

    events = fake_url_reads(monkeypatch, tmp_path)

    class Read(Exception):
        pass

    def read_on_a_nodes_second_process(read, flag="--resume"):
        with monkeypatch.context() as node:
            node.setattr(dist, "is_initialized", lambda: True)
            node.setattr(dist, "get_world_size", lambda group=None: 2)
            node.setattr(dist, "get_rank", lambda group=None: 1)
            node.setattr(dist, "barrier", lambda *args, **kwargs: events.append("barrier"))
            node.setenv("LOCAL_RANK", "1")
            raise Read(read())

    url = "https://example.org/weights.pth"
    monkeypatch.setattr(evaluate, "read_alike_on_every_rank", read_on_a_nodes_second_process)
    with pytest.raises(Read) as read:
        evaluate.test(parse_args(["--dataset", "digits", *TINY_MODEL, "--resume", url, "--output", str(tmp_path)]))
    path, _, ckpt = read.value.args[0]
    assert events == ["barrier", "read"] and path == url and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
