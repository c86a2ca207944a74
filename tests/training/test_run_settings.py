"""Settings of a run checked against hand-computed values: `_base_` precedence and merging, `--model-kwargs` values,
`--decay-by-epoch`, the CSV rewind of a resume, `module.` stripping and the kept-checkpoint list of a resumed run."""
import math
import os

import pytest
import torch

from classification.common.checkpoint_io import state_dict_from
from classification.common.csv_log import LR_HEADER, CsvLog
from classification.engine.checkpoint import BEST, LAST, CheckpointManager
from classification.engine.config import ConfigError, parse_args
from classification.engine.scheduler import build_scheduler


def test_child_config_values_win_over_its_base(tmp_path):
    """Guards against a `_base_` file overriding the values of the file that includes it."""
    (tmp_path / "base.yaml").write_text("model_ema: true\nmodel_kwargs: {depth: 4}\nlr: 1.0e-3\nseed: 7\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel_ema: false\nmodel_kwargs: {depth: 2}\n"
                                         "lr: 2.0e-3\n")
    cfg = parse_args(["-c", str(tmp_path / "child.yaml")])
    assert cfg.model_ema is False and cfg.model_kwargs == {"depth": 2} and cfg.lr == 2.0e-3
    assert cfg.seed == 7  # a value only the base gives is kept


def test_child_model_kwargs_are_merged_into_the_bases_key_by_key(tmp_path):
    """A file that sets one model argument keeps the others of its base (mmengine's merge): with a shallow merge,
    `depth: 4` over the quick start's `patch_size: 4` trained a 16-pixel-patch model on 16-pixel images."""
    (tmp_path / "base.yaml").write_text("model_kwargs: {patch_size: 4, depth: 20}\n")
    (tmp_path / "mid.yaml").write_text("_base_: base.yaml\nmodel_kwargs: {depth: 4, drop_path_rate: 0.1}\n")
    (tmp_path / "child.yaml").write_text("_base_: mid.yaml\nmodel_kwargs: {depth: 2}\n")
    cfg = parse_args(["-c", str(tmp_path / "child.yaml")])
    assert cfg.model_kwargs == {"patch_size": 4, "depth": 2, "drop_path_rate": 0.1}


def test_delete_replaces_the_bases_model_kwargs_whole(tmp_path):
    (tmp_path / "base.yaml").write_text("model_kwargs: {patch_size: 4, depth: 20}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel_kwargs: {_delete_: true, depth: 2}\n")
    assert parse_args(["-c", str(tmp_path / "child.yaml")]).model_kwargs == {"depth": 2}
    (tmp_path / "alone.yaml").write_text("model_kwargs: {_delete_: true, depth: 3}\n")
    assert parse_args(["-c", str(tmp_path / "alone.yaml")]).model_kwargs == {"depth": 3}
    (tmp_path / "bad.yaml").write_text("_base_: base.yaml\nmodel_kwargs: {_delete_: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'model_kwargs': _delete_ is true or false, got 1"):
        parse_args(["-c", str(tmp_path / "bad.yaml")])


def lrs(kind, by_epoch, total=20):
    flags = ["--sched", kind, "--lr", "0.1", "--min-lr", "0.001", "--warmup-lr", "0.01", "--epochs", "4",
             "--warmup-epochs", "1", "--decay-epochs", "1", "--decay-rate", "0.5"]
    cfg = parse_args(flags + (["--decay-by-epoch"] if by_epoch else []))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return values


def after(kind, u):
    """The post-warmup LR of the module's formula (W = 5 warmup steps of N = 20, lr 0.1, min_lr 0.001)."""
    if kind == "cosine":
        return 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * u / 15)) / 2
    return 0.1 * (15 - u) / 15


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_by_epoch_holds_the_lr_for_an_epoch(kind):
    """Guards against --decay-by-epoch being ignored: after warmup the LR of iteration t is the schedule at
    u = t - W - 1 rounded down to a multiple of the epoch length (constant over 5 iterations, then a new value);
    without the flag it changes every iteration."""
    stepped, per_step = lrs(kind, True), lrs(kind, False)
    assert stepped[:6] == per_step[:6]  # warmup (and its last step) alike
    for t in range(6, 20):
        assert stepped[t] == pytest.approx(after(kind, (t - 6) // 5 * 5), rel=1e-12)
        assert per_step[t] == pytest.approx(after(kind, t - 6), rel=1e-12)
    assert len(set(stepped[6:11])) == 1 and len(set(stepped[11:16])) == 1 and stepped[10] != stepped[11]
    assert stepped[6] != stepped[16]
    assert per_step[6] != per_step[7]


def test_decay_by_epoch_does_not_change_the_step_schedule():
    """The step schedule already decays per `--decay-epochs`: the flag leaves it as it is."""
    assert lrs("step", True) == lrs("step", False)


def test_truncate_from_drops_the_resume_step_and_a_torn_row(tmp_path):
    """Guards against keeping lr.csv's row of the resumed step (the resumed run writes it again: a duplicate) and
    against keeping a torn last row a killed process left."""
    path = str(tmp_path / "lr.csv")
    log = CsvLog(path, LR_HEADER)
    for row in ([0, 3, 0.01], [1, 5, 0.1], [1, 7, 0.2], [1, 9, 0.3], [2, 10, 0.4]):
        log.append(row)
    log.truncate_from(1, 7)
    with open(path) as f:
        assert f.read().splitlines() == ["epoch,step,lr", "0,3,0.01", "1,5,0.1"]
    with open(path, "a", newline="") as f:
        f.write("1,6")  # a torn row: two of three columns, no newline
    log.truncate_from(2)
    with open(path) as f:
        assert f.read().splitlines() == ["epoch,step,lr", "0,3,0.01", "1,5,0.1"]


def test_state_dict_from_strips_every_module_prefix():
    """Guards against stripping `module.` once: the original's EMA of a DDP model has it twice."""
    t, u = torch.ones(2), torch.zeros(1)
    assert state_dict_from({"state_dict_ema": {"module.module.a": t}}) == {"a": t}
    assert state_dict_from({"model": {"module.module.a": t, "module.b": u}}) == {"a": t, "b": u}
    assert state_dict_from({"module.module.a": t}) == {"a": t}  # a flat tensor dict


def test_loaded_checkpoint_list_is_cut_to_keep_num(tmp_path):
    """Guards against a resumed manager keeping more than keep_num entries: with keep_num=1 only the best of the
    three recorded checkpoints stays, in the list and in the folder, and best.pth.tar is its copy."""
    for epoch in (1, 2, 3):
        (tmp_path / f"checkpoint-{epoch}.pth.tar").write_bytes(f"epoch {epoch}".encode())
    manager = CheckpointManager(str(tmp_path), keep_num=1)
    manager.load_state_dict([["checkpoint-3.pth.tar", 0.9], ["checkpoint-1.pth.tar", 0.8],
                             [str(tmp_path / "checkpoint-2.pth.tar"), 0.5]])
    assert manager.state_dict() == [["checkpoint-3.pth.tar", 0.9]]
    manager.reconcile()
    assert sorted(os.listdir(tmp_path)) == [BEST, "checkpoint-3.pth.tar"]
    assert (tmp_path / BEST).read_bytes() == b"epoch 3"


def test_an_epoch_ranked_past_keep_num_deletes_its_file(tmp_path):
    """Guards against keeping the file of a checkpoint evicted from the list (a disk filled by every epoch's file):
    with keep_num=2 and top-1 of 0.5, 0.7, 0.6, 0.9 for epochs 0-3, epoch 2 evicts epoch 0 and epoch 3 evicts epoch
    2: the folder ends with the files of epochs 3 and 1 only, beside last.pth.tar and best.pth.tar (epoch 3's)."""
    manager = CheckpointManager(str(tmp_path), keep_num=2)
    for epoch, score in enumerate((0.5, 0.7, 0.6, 0.9)):
        manager.update(epoch, score, {"epoch": epoch})
    assert manager.state_dict() == [["checkpoint-3.pth.tar", 0.9], ["checkpoint-1.pth.tar", 0.7]]
    assert sorted(os.listdir(tmp_path)) == sorted([BEST, LAST, "checkpoint-1.pth.tar", "checkpoint-3.pth.tar"])
    assert torch.load(tmp_path / BEST, weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / LAST, weights_only=True)["epoch"] == 3


def test_latest_is_the_kept_checkpoint_of_the_latest_epoch_before_the_one_given(tmp_path):
    """The divergence advice's --rewind target: the latest epoch before `before_epoch` whose kept file exists, not the
    best nor the earliest one."""
    manager = CheckpointManager(str(tmp_path), keep_num=3)
    for epoch, score in enumerate((0.9, 0.5, 0.7)):
        manager.update(epoch, score, {"epoch": epoch})
    assert manager.latest(before_epoch=3) == (2, str(tmp_path / "checkpoint-2.pth.tar"))
    assert manager.latest(before_epoch=2) == (1, str(tmp_path / "checkpoint-1.pth.tar"))
    assert manager.latest(before_epoch=0) is None
    os.remove(tmp_path / "checkpoint-1.pth.tar")
    assert manager.latest(before_epoch=2) == (0, str(tmp_path / "checkpoint-0.pth.tar"))


def test_adopt_ranks_keep_num_of_the_original_codes_files_and_leaves_the_rest_alone(tmp_path):
    """Of four scored files with --keep-num 2, the two best are ranked; the other two are left alone (never deleted),
    not ranked past keep_num."""
    for epoch in range(4):
        (tmp_path / f"checkpoint-{epoch}.pth.tar").write_bytes(b"x")
    manager = CheckpointManager(str(tmp_path), keep_num=2)
    ranked = manager.adopt(4, {0: 40.0, 1: 70.0, 2: 60.0, 3: 50.0})
    assert ranked == [["checkpoint-1.pth.tar", 70.0], ["checkpoint-2.pth.tar", 60.0]]
    assert manager.left_alone == {"checkpoint-0.pth.tar", "checkpoint-3.pth.tar"}
    manager.reconcile()
    assert sorted(os.listdir(tmp_path)) == [BEST, *[f"checkpoint-{epoch}.pth.tar" for epoch in range(4)]]


def test_model_kwargs_value_may_hold_an_equals_sign():
    """Guards against splitting `key=value` at every '=': the value is all after the first one, read as YAML."""
    cfg = parse_args(["--model-kwargs", "k=a=b", "n=3", "s=x=1=2"])
    assert cfg.model_kwargs == {"k": "a=b", "n": 3, "s": "x=1=2"}
