"""A run killed after an epoch and resumed ends bit-identical to an uninterrupted run (on CPU)."""
import csv
import os
import signal
import subprocess
import sys
import time

import torch

from training_helpers import TINY_MODEL, TOOLS, make_folder_tree, run_tool, tool_env

EPOCHS = 2
# every source of randomness on: RandAugment, random erasing, mixup/cutmix, drop path, EMA, a loader worker
RECIPE = ["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", str(EPOCHS), "--opt", "adamw", "--lr", "2e-3",
          "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "1", "--aa", "rand-m9-mstd0.5",
          "--reprob", "0.25", "--remode", "pixel", "--mixup", "0.2", "--cutmix", "1.0", "--drop-path-rate", "0.1",
          "--model-ema", "--model-ema-decay", "0.99", "-j", "1", "--log-interval", "10"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill_and_resume_is_bit_exact(tmp_path):
    out = str(tmp_path)
    run_tool("train.py", *RECIPE, "--output", out, "--experiment", "straight")

    # kill the second run as soon as its first epoch is committed (last.pth.tar; SIGKILL: no clean-up code runs)
    exp = os.path.join(out, "killed")
    proc = subprocess.Popen([sys.executable, os.path.join(TOOLS, "train.py"), *RECIPE, "--output", out,
                             "--experiment", "killed"], env=tool_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = os.path.join(exp, "metrics.csv")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(exp, "last.pth.tar")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivor = load(os.path.join(exp, "last.pth.tar"))  # the last good checkpoint is intact
    resumed_from = survivor["epoch"]
    assert resumed_from < EPOCHS - 1, "the run finished before it could be killed"

    run_tool("train.py", *RECIPE, "--output", out, "--experiment", "killed", "--resume",
             os.path.join(exp, "last.pth.tar"))

    a, b = load(os.path.join(out, "straight", "last.pth.tar")), load(os.path.join(exp, "last.pth.tar"))
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    for key in ("model", "ema_model"):
        assert list(a[key]) == list(b[key])
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                 b["optimizer"]["state"][0].values()))
    assert rows(os.path.join(out, "straight", "metrics.csv")) == rows(metrics)


def test_each_rank_gets_its_own_gpu_generator_back_in_another_node_layout(monkeypatch):
    """A run of 8 processes saved on 2 nodes of 4 GPUs and resumed on 1 node of 8: rank 5 drew from GPU 1 and now
    draws from GPU 5. Its generator's state must go onto GPU 5, its current device (restoring every device's state
    by index gave GPU 5 nothing, and GPU 1 rank 5's state, on a GPU that rank 1 uses)."""
    from classification.common.rng import get_rng_state, set_rng_state

    generators = {index: torch.full((16,), index, dtype=torch.uint8) for index in range(8)}
    current = {"index": 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [generators[i] for i in range(4)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: generators.update(enumerate(s.clone() for s in states)))

    def get_gpu_state(device="cuda"):
        return generators[current["index"] if device == "cuda" else torch.device(device).index].clone()

    def set_gpu_state(state, device="cuda"):
        generators[current["index"] if device == "cuda" else torch.device(device).index] = state.clone()

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_gpu_state)
    generators[1] = torch.full((16,), 55, dtype=torch.uint8)   # rank 5's generator, on GPU 1 of its node
    saved = get_rng_state()
    generators.update({index: torch.zeros(16, dtype=torch.uint8) for index in range(8)})   # the new node, fresh
    current["index"] = 5
    set_rng_state(saved)
    assert generators[5].tolist() == [55] * 16
    assert all(generators[index].tolist() == [0] * 16 for index in range(8) if index != 5)


def test_ema_starts_from_released_weights_given_to_resume(tmp_path):
    """A released {'state_dict'} file given to --resume initialises the EMA too, not only the model."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "--epochs", "1", "-j", "0", "--warmup-epochs", "0",
              "--output", str(tmp_path)]
    train(parse_args([*common, "--experiment", "source"]))
    weights = load(os.path.join(str(tmp_path), "source", "last.pth.tar"))["model"]
    released = str(tmp_path / "released.pth")
    torch.save({"state_dict": weights}, released)
    # decay 1: the EMA keeps its starting weights, which must be the released ones
    train(parse_args([*common, "--seed", "7", "--experiment", "finetune", "--resume", released, "--model-ema",
                      "--model-ema-decay", "1.0"]))
    ema = load(os.path.join(str(tmp_path), "finetune", "last.pth.tar"))["ema_model"]
    assert list(ema) == list(weights)
    assert all(torch.equal(ema[k], weights[k]) for k in weights)


def test_switching_the_ema_on_resume_warns_that_the_metrics_change_weights(tmp_path):
    """metrics.csv's validation columns are the EMA's with --model-ema: a resume that switches it mixes two weights'
    accuracies in one column (and in the checkpoint ranking); it is now said, each way."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0",
              "--output", str(tmp_path), "--experiment", "run"]
    train(parse_args([*common, "--epochs", "1"]))
    last = os.path.join(str(tmp_path), "run", "last.pth.tar")
    train(parse_args([*common, "--epochs", "2", "--resume", last, "--model-ema"]))
    train(parse_args([*common, "--epochs", "3", "--resume", last]))
    logs = sorted(os.path.join(str(tmp_path), "run", name) for name in os.listdir(os.path.join(str(tmp_path), "run"))
                  if name.startswith("log_"))
    text = "".join(open(path).read() for path in logs)
    assert (f"WARNING --model-ema on where the run of {last} had it off: from epoch 1 the validation columns of "
            f"metrics.csv and the ranking of the kept checkpoints are the EMA's (which starts from the resumed "
            f"weights), before it the model's") in text
    assert (f"WARNING --model-ema off where the run of {last} had it on: from epoch 2 the validation columns of "
            f"metrics.csv and the ranking of the kept checkpoints are the model's, before it the EMA's (whose weights "
            f"are dropped)") in text


def _resumed_run(monkeypatch, argv):
    """The Run of `train(argv)` right after it resumed (its training is skipped)."""
    import classification.engine.trainer as trainer_mod
    from classification.engine.config import parse_args

    runs = []
    monkeypatch.setattr(trainer_mod.Run, "fit", lambda self: runs.append(self) or {})
    trainer_mod.train(parse_args(argv))
    return runs[0]


def test_resume_with_a_new_weight_decay_layout_keeps_each_parameters_moments(tmp_path, monkeypatch):
    """Weight decay 0.05 -> 0 changes the two parameter groups into one: each moment follows its parameter."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0", "--opt", "adamw",
              "--output", str(tmp_path), "--experiment", "run"]
    train(parse_args([*common, "--epochs", "1", "--weight-decay", "0.05"]))
    last = os.path.join(str(tmp_path), "run", "last.pth.tar")
    saved = load(last)["optimizer"]["state"]
    run = _resumed_run(monkeypatch, [*common, "--epochs", "2", "--weight-decay", "0", "--resume", last])
    named = list(run.model.named_parameters())
    skip = set(run.model.no_weight_decay())
    exempt = [p.ndim == 1 or n.endswith(".bias") or n in skip for n, p in named]
    old_order = [n for (n, _), e in zip(named, exempt) if e] + [n for (n, _), e in zip(named, exempt) if not e]
    assert len(run.optimizer.param_groups) == 1 and run.optimizer.param_groups[0]["weight_decay"] == 0
    for name, param in named:
        state = run.optimizer.state[param]
        assert torch.equal(state["exp_avg"], saved[old_order.index(name)]["exp_avg"]), name
        assert torch.equal(state["exp_avg_sq"], saved[old_order.index(name)]["exp_avg_sq"]), name


def test_resume_with_another_optimizer_starts_its_state_afresh(tmp_path, monkeypatch):
    """SGD momentum buffers are no AdamW moments: --opt adamw on an SGD run starts AdamW's state empty."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0",
              "--output", str(tmp_path), "--experiment", "run"]
    train(parse_args([*common, "--epochs", "1", "--opt", "sgd"]))
    last = os.path.join(str(tmp_path), "run", "last.pth.tar")
    run = _resumed_run(monkeypatch, [*common, "--epochs", "2", "--opt", "adamw", "--resume", last])
    assert isinstance(run.optimizer, torch.optim.AdamW) and not run.optimizer.state
    metrics = train_one_more_epoch(run)
    assert metrics["train_loss"] > 0 and all("exp_avg" in s for s in run.optimizer.state.values())


def train_one_more_epoch(run):
    from classification.engine.experiment import RunFolder
    from classification.engine.train_loop import train_one_epoch

    run.open_outputs(RunFolder(run.exp_dir))
    return train_one_epoch(run, run.start_epoch)


def test_a_resume_says_which_folder_it_continues_in(tmp_path, monkeypatch):
    """Resuming a checkpoint of another folder continues there; the folder --experiment named is mentioned only when
    the user named one (without --experiment the default 'exp' is no folder the user meant)."""
    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0",
              "--output", str(tmp_path)]
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    train(parse_args([*common, "--epochs", "1", "--experiment", "run"]))
    run_dir = os.path.join(str(tmp_path), "run")
    last = os.path.join(run_dir, "last.pth.tar")

    def log_text():
        logs = sorted(n for n in os.listdir(run_dir) if n.startswith("log_"))
        return "".join(open(os.path.join(run_dir, n)).read() for n in logs)

    _resumed_run(monkeypatch, [*common, "--epochs", "2", "--resume", last])
    assert f"Continuing in the resumed checkpoint's folder {run_dir}\n" in log_text()
    _resumed_run(monkeypatch, [*common, "--epochs", "2", "--resume", last, "--experiment", "other"])
    named = os.path.join(str(tmp_path), "other")
    assert (f"Continuing in the resumed checkpoint's folder {run_dir} (not {named}, where --experiment points)"
            in log_text())


def test_a_resumed_runs_config_names_its_own_folder(tmp_path, monkeypatch):
    """args.yaml and the checkpoints of a run resumed from another --output / --experiment name the folder it lives
    in (they named the command's: -c args.yaml --resume auto then started a fresh run in that other folder)."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0"]
    train(parse_args([*common, "--epochs", "1", "--output", str(tmp_path / "runs"), "--experiment", "run"]))
    run_dir = tmp_path / "runs" / "run"
    monkeypatch.chdir(tmp_path)
    train(parse_args([*common, "--epochs", "2", "--resume", str(run_dir / "last.pth.tar")]))   # default --output
    config = str(run_dir / "args.yaml")
    saved = parse_args(["-c", config])
    assert (saved.output, saved.experiment) == (str(tmp_path / "runs"), "run")
    assert load(run_dir / "last.pth.tar")["config"]["experiment"] == "run"
    train(parse_args(["-c", config, "--resume", "auto", "--epochs", "3"]))
    assert load(run_dir / "last.pth.tar")["epoch"] == 2 and not (tmp_path / "experiments").exists()


def test_a_runs_config_resumes_it_from_another_working_directory(tmp_path, monkeypatch):
    """A fresh run given a relative --output recorded it relative in args.yaml: `-c RUN/args.yaml --resume auto` from
    another working directory found no last.pth.tar there and trained a new run from scratch in a new folder (here
    its relative --data-path was not found there either)."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    (tmp_path / "elsewhere").mkdir()
    make_folder_tree(str(tmp_path / "here" / "data"))
    monkeypatch.chdir(tmp_path / "here")
    train(parse_args(["--dataset", "imagenet", "--data-path", "data", *TINY_MODEL, "-b", "4", "-j", "0",
                      "--warmup-epochs", "0", "--epochs", "1", "--output", "runs", "--experiment", "run"]))
    run_dir = tmp_path / "here" / "runs" / "run"
    monkeypatch.chdir(tmp_path / "elsewhere")
    train(parse_args(["-c", str(run_dir / "args.yaml"), "--resume", "auto", "--epochs", "2"]))
    assert load(run_dir / "last.pth.tar")["epoch"] == 1
    assert os.listdir(tmp_path / "elsewhere") == []


ORIGINAL_KEYS = ("epoch", "model", "ema_model", "optimizer", "scaler")   # what the original's checkpoints hold


def test_a_run_of_the_original_code_continues_in_its_folder_without_losing_its_checkpoints(tmp_path):
    """A folder as the original code leaves it (checkpoints without a kept list, config, RNG or run id; its own
    args.yaml with the flags of its left-out features; a header in metrics.csv at every start): --resume ranks its
    checkpoint files by metrics.csv's top-1 instead of deleting them all, keeps its args.yaml, and says that the
    optimizer kind and the EMA it had (read from the state) change."""
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    common = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "-j", "0", "--warmup-epochs", "0", "--output",
              str(tmp_path), "--experiment", "orig"]
    train(parse_args([*common, "--epochs", "3", "--opt", "adamw", "--lr", "3e-3", "--model-ema"]))
    run = tmp_path / "orig"
    for name in ("checkpoint-0.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "best.pth.tar",
                 "last.pth.tar"):
        ckpt = load(run / name)
        torch.save({key: ckpt[key] for key in ORIGINAL_KEYS}, run / name)
    scores = {int(row[0]): float(row[3]) for row in rows(run / "metrics.csv")[1:]}
    original_args = "model: vit_tiny_patch16_224\nopt: adamw\nkd: ''\ndyrep: false\nauxiliary_weight: 0.4\n"
    (run / "args.yaml").write_text(original_args)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text + text.splitlines()[0] + "\n")   # the header its next start would write
    for name in os.listdir(run):
        if name.startswith("log_"):
            os.remove(run / name)

    train(parse_args([*common, "--epochs", "4", "--opt", "sgd", "--lr", "1e-3", "--resume",
                      str(run / "last.pth.tar")]))
    files = sorted(name for name in os.listdir(run) if name.endswith(".pth.tar"))
    assert files == ["best.pth.tar", *[f"checkpoint-{e}.pth.tar" for e in range(4)], "last.pth.tar"]
    assert (run / "args_original.yaml").read_text() == original_args
    last = load(run / "last.pth.tar")
    scores[3] = float(rows(run / "metrics.csv")[-1][3])
    ranked = sorted(scores, key=lambda epoch: (-scores[epoch], epoch))
    assert last["checkpoints"] == [[f"checkpoint-{e}.pth.tar", scores[e]] for e in ranked]
    assert load(run / "best.pth.tar")["epoch"] == ranked[0]
    (log,) = [run / name for name in os.listdir(run) if name.startswith("log_")]
    text = log.read_text()
    assert (f"{run / 'last.pth.tar'} records no kept checkpoints (the original code's): ranked its folder's "
            f"{[f'checkpoint-{e}.pth.tar' for e in sorted(range(3), key=lambda e: (-scores[e], e))]} by "
            f"metrics.csv's top-1") in text
    assert f"--opt changed on resume (adamw -> sgd): the optimizer state of {run / 'last.pth.tar'} is not used" in text
    assert f"--model-ema off where the run of {run / 'last.pth.tar'} had it on" in text
    assert "holds no RNG states (the original code saves none)" in text


def test_the_original_codes_files_are_ranked_left_alone_or_rewound_as_their_epochs_say(tmp_path):
    """`adopt` ranks the files of epochs before the resumed one that metrics.csv scores; one without a score is left
    alone through later resumes (the list travels in the checkpoints); those of later epochs go, as a rewind's."""
    from classification.common.csv_log import epoch_scores
    from classification.engine.checkpoint import CheckpointManager

    for epoch in range(5):
        torch.save({"epoch": epoch}, tmp_path / f"checkpoint-{epoch}.pth.tar")
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,test_loss,top1,top5\n0,2,2,40,90\n2,1,1,60,95\n"
                                          "epoch,train_loss,test_loss,top1,top5\n3,1,1,50,95\n4,1,1,70")
    assert epoch_scores(str(tmp_path / "metrics.csv")) == {0: 40.0, 2: 60.0, 3: 50.0}   # the partial row skipped
    manager = CheckpointManager(str(tmp_path), keep_num=10)
    assert manager.adopt(4, epoch_scores(str(tmp_path / "metrics.csv"))) == [
        ["checkpoint-2.pth.tar", 60.0], ["checkpoint-3.pth.tar", 50.0], ["checkpoint-0.pth.tar", 40.0]]
    manager.reconcile()   # a rewind to epoch 4: its own file goes; epoch 1's, never scored, stays
    assert sorted(os.listdir(tmp_path)) == ["best.pth.tar", *[f"checkpoint-{e}.pth.tar" for e in range(4)],
                                            "metrics.csv"]
    payload = {}
    manager.save_last(payload)
    assert payload["left_alone"] == ["checkpoint-1.pth.tar"]
    again = CheckpointManager(str(tmp_path), keep_num=10)
    again.load_state_dict(payload["checkpoints"], payload["left_alone"])
    again.reconcile()   # a later resume of this code's own checkpoint
    assert (tmp_path / "checkpoint-1.pth.tar").exists()
    assert load(tmp_path / "best.pth.tar")["epoch"] == 2
