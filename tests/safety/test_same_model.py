"""A training checkpoint is resumed or evaluated only by the model it was trained as: its model name and its scan
directions, or a supernet's candidates (two direction tables, or candidate lists, give weights of the same keys and
shapes, which load and compute something else)."""
import shutil

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError
from classification.engine.checkpoint import check_same_model, saved_search_candidates
from classification.models.directions import (LOCAL_VIM_TINY_DIRECTIONS, load_directions, save_directions,
                                              scan_directions)

from safety_helpers import assert_one_line_error, run_tool

SMALL = dict(embed_dim=16, num_classes=3)
LOCAL_VIM = ["--dataset", "digits", "--model", "local_vim_tiny", "--model-kwargs", "embed_dim=16", "patch_size=4",
             "--img-size", "16", "-b", "256", "-j", "0", "--epochs", "1", "--warmup-epochs", "0"]


RUN_DIRECTIONS = [["h", "v", "w2", "w2_flip"]] * 20


@pytest.fixture(scope="module")
def directions_run(tmp_path_factory):
    """One LocalVim run the end-to-end tests share, trained with `--directions search/directions.yaml` (a path
    relative to the folder it was started in): that folder, holding search/directions.yaml and runs/run/."""
    base = tmp_path_factory.mktemp("directions")
    (base / "search").mkdir()
    save_directions(base / "search" / "directions.yaml", RUN_DIRECTIONS)
    run_tool("train.py", *LOCAL_VIM, "--directions", "search/directions.yaml", "--output", str(base / "runs"),
             "--experiment", "run", cwd=str(base))
    return base


def test_the_direction_table_is_saved_per_layer():
    assert scan_directions(timm.create_model("local_vim_tiny", **SMALL)) == [list(t) for t in LOCAL_VIM_TINY_DIRECTIONS]
    assert scan_directions(timm.create_model("local_vim_tiny_search", **SMALL)) is None
    assert scan_directions(timm.create_model("resnet10t", num_classes=3)) is None


def test_other_directions_are_refused_naming_the_first_different_layer_and_the_file(tmp_path):
    searched = timm.create_model("local_vim_tiny", **SMALL)
    uniform = timm.create_model("local_vim_tiny", directions=[["h", "h_flip", "w2", "w2_flip"]] * 20, **SMALL)
    table = tmp_path / "directions.yaml"
    save_directions(table, scan_directions(searched))
    ckpt = {"model_name": "local_vim_tiny", "directions": scan_directions(searched),
            "config": {"directions": str(table)}}
    check_same_model(searched, "local_vim_tiny", ckpt, "run/last.pth.tar")
    with pytest.raises(CheckpointError, match=r"run/last.pth.tar was trained with other scan directions \(layer 0: "
                                              r"\['h', 'v_flip', 'w7', 'w7_flip'\] vs \['h', 'h_flip', 'w2', "
                                              rf"'w2_flip'\] here\); give --directions {table}, as its run did$"):
        check_same_model(uniform, "local_vim_tiny", ckpt, "run/last.pth.tar")
    table.unlink()     # the file named is gone: the checkpoint, which holds the directions, is named instead
    with pytest.raises(CheckpointError, match=rf"here\); the file its run was given, {table}, is gone: give "
                                              r"--directions run/last.pth.tar \(the checkpoint holds its own\)$"):
        check_same_model(uniform, "local_vim_tiny", ckpt, "run/last.pth.tar")
    ckpt["config"] = {"directions": None}
    with pytest.raises(CheckpointError, match=r"give no --directions \(its run used the model's own\)"):
        check_same_model(uniform, "local_vim_tiny", ckpt, "run/last.pth.tar")


def test_a_checkpoint_of_another_depth_is_refused_naming_its_model_kwargs_and_its_run_config(tmp_path):
    """Its first layers' directions equal the model's: the check looked for a differing layer and raised
    StopIteration (a traceback) instead of saying the depths differ."""
    deep = timm.create_model("local_vim_tiny", **SMALL)
    shallow = timm.create_model("local_vim_tiny", directions=scan_directions(deep)[:4], depth=4, **SMALL)
    ckpt = {"model_name": "local_vim_tiny", "directions": scan_directions(shallow),
            "config": {"model_kwargs": {"depth": 4, "embed_dim": 64}}}
    path = tmp_path / "run" / "last.pth.tar"
    with pytest.raises(CheckpointError, match=rf"^{path} holds a model of 4 layers, this model has 20: give "
                                              rf"--model-kwargs depth=4 embed_dim=64, as its run did$"):
        check_same_model(deep, "local_vim_tiny", ckpt, str(path))
    ckpt["config"]["directions"] = "dirs4.yaml"       # another depth needs its directions too
    with pytest.raises(CheckpointError, match=r"give --model-kwargs depth=4 embed_dim=64 --directions dirs4.yaml, as "
                                              r"its run did$"):
        check_same_model(deep, "local_vim_tiny", ckpt, str(path))
    del ckpt["config"]["directions"]
    path.parent.mkdir()
    (path.parent / "args.yaml").write_text("model: local_vim_tiny\n")
    with pytest.raises(CheckpointError, match=rf"as its run did \(or -c {path.parent / 'args.yaml'}, its run's "
                                              rf"whole config\)$"):
        check_same_model(deep, "local_vim_tiny", ckpt, str(path))


def test_a_supernet_checkpoint_is_refused_by_a_fixed_table_and_a_renamed_model_by_name():
    supernet = timm.create_model("local_vim_tiny_search", **SMALL)
    fixed = timm.create_model("local_vim_tiny", **SMALL)
    ckpt = {"model_name": "local_vim_tiny", "directions": None, "config": {}}
    with pytest.raises(CheckpointError, match="a search supernet vs this model's fixed table"):
        check_same_model(fixed, "local_vim_tiny", ckpt, "x")
    with pytest.raises(CheckpointError, match="x is a checkpoint of local_vim_tiny, not of local_vim_tiny_search: "
                                              "give --model local_vim_tiny"):
        check_same_model(supernet, "local_vim_tiny_search", ckpt, "x")


def test_released_weights_and_checkpoints_from_before_the_entries_are_not_checked():
    model = timm.create_model("local_vim_tiny", **SMALL)
    check_same_model(model, "local_vim_tiny", {"epoch": 3, "model": {}}, "x")
    check_same_model(model, "local_vim_tiny", {"state_dict": model.state_dict()}, "x")


def test_resume_and_test_refuse_a_run_of_other_directions(directions_run, tmp_path):
    """End to end: a LocalVim run trained with a directions file; resuming or evaluating it without that file (the
    registered table: same keys and shapes) stops with one line naming the file, before anything is written."""
    table = directions_run / "search" / "directions.yaml"
    last = directions_run / "runs" / "run" / "last.pth.tar"
    expected = f"{last} was trained with other scan directions (layer 0: ['h', 'v', 'w2', 'w2_flip'] vs"
    for tool, flags in (("train.py", ["--epochs", "2"]), ("test.py", [])):
        proc = run_tool(tool, *LOCAL_VIM, *flags, "--resume", str(last), "--output", str(tmp_path), check=False)
        assert_one_line_error(proc, expected)
        assert f"give --directions {table}, as its run did" in proc.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 0
    metrics = run_tool("test.py", *LOCAL_VIM, "--directions", str(table), "--resume", str(last), "--output",
                       str(tmp_path))
    assert metrics.returncode == 0


def test_a_run_whose_directions_file_changed_continues_with_the_checkpoints_own(directions_run, tmp_path):
    """The file a run was trained with was overwritten (a later vis_search_prob.py --overwrite): -c its args.yaml,
    which names that file, failed to resume or evaluate it, and the refusal pointed back to the same file.
    (The shared run is copied, as this one trains on; its file is overwritten here and put back after.)"""
    table = directions_run / "search" / "directions.yaml"
    run = tmp_path / "run"
    shutil.copytree(directions_run / "runs" / "run", run)
    last = run / "last.pth.tar"
    save_directions(table, [["h_flip", "v_flip", "w7", "w7_flip"]] * 20)
    try:
        proc = run_tool("test.py", "-c", str(run / "args.yaml"), "--resume", str(last), check=False)
        assert_one_line_error(proc, f"{last} was trained with other scan directions (layer 0: ['h', 'v', 'w2', "
                                    f"'w2_flip']")
        assert (f"the file its run was given, {table}, now holds other directions: give --directions {last} (the "
                f"checkpoint holds its own), with -c {run / 'args.yaml'} if you like") in proc.stderr
        proc = run_tool("test.py", "-c", str(run / "args.yaml"), "--directions", str(last), "--resume", str(last))
        assert "Top-1" in proc.stdout
        run_tool("train.py", "-c", str(run / "args.yaml"), "--directions", str(last), "--resume", str(last),
                 "--epochs", "2")
    finally:
        save_directions(table, RUN_DIRECTIONS)
    assert torch.load(last, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("content, match", [
    (None, "a checkpoint that records no scan directions"),
    (b"\x81\x82 not text", "neither a directions YAML file nor a checkpoint"),
])
def test_a_directions_file_that_holds_none_is_refused_by_name(tmp_path, content, match):
    path = tmp_path / "file.bin"
    if content is None:
        torch.save({"state_dict": timm.create_model("local_vim_tiny", **SMALL).state_dict()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: {match}"):
        load_directions(path)


def test_a_directions_checkpoint_that_needs_pickle_gets_advice_that_works(tmp_path):
    """A checkpoint of the previous code (numpy's RNG state as an ndarray: it needs pickle) given as --directions was
    refused with 'pass --trust-checkpoint', which --directions does not take (flops.py and speed_test.py have no such
    flag; train.py's reaches --resume and --finetune only): the same refusal came back. The advised conversion
    writes a file that --directions reads."""
    import numpy as np

    from classification.engine.checkpoint import convert_checkpoint

    table = [["h", "v", "w2", "w2_flip"]] * 20
    legacy = tmp_path / "last.pth.tar"
    torch.save({"model": {"w": torch.ones(2)}, "directions": table, "rng": np.random.get_state()}, legacy)
    with pytest.raises(ValueError) as raised:
        load_directions(legacy)
    out = tmp_path / "released.pth"
    assert str(raised.value) == (f"{legacy} holds pickled objects beyond tensors and plain containers, and loading "
                                 f"it could run code; --directions reads checkpoints without pickle: if you trust its "
                                 f"source, python tools/convert_ckpt.py {legacy} OUT --trust-checkpoint writes its "
                                 f"weights and directions to OUT, which --directions reads")
    convert_checkpoint(str(legacy), str(out), trust=True)
    assert load_directions(out) == table


def test_a_run_with_a_relative_directions_path_is_reused_from_any_folder(directions_run, tmp_path):
    """`--directions search/directions.yaml` was saved as typed: `-c RUN/args.yaml` from another folder could not
    find the file, and the refusal's hint named a path that did not work there."""
    run = directions_run / "runs" / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_tool("test.py", "-c", str(run / "args.yaml"), "--resume", str(run / "last.pth.tar"), "--output",
                    str(elsewhere), cwd=str(elsewhere))
    assert "Top-1" in proc.stdout
    proc = run_tool("test.py", *LOCAL_VIM, "--resume", str(run / "last.pth.tar"), "--output", str(elsewhere),
                    cwd=str(elsewhere), check=False)
    assert f"give --directions {directions_run / 'search' / 'directions.yaml'}, as its run did" in proc.stderr


def test_a_search_over_other_candidates_is_refused_naming_them():
    """Two candidate lists of one length give supernet weights of the same keys and shapes: the checkpoint's list
    (saved by training) must be the model's."""
    ours = timm.create_model("local_vim_tiny_search", candidates=["h", "v", "w2"], **SMALL)
    other = timm.create_model("local_vim_tiny_search", candidates=["h", "v", "w3"], **SMALL)
    assert saved_search_candidates(ours) == ["h", "v", "w2"]
    assert saved_search_candidates(timm.create_model("local_vim_tiny", **SMALL)) is None
    ckpt = {"model_name": "local_vim_tiny_search", "directions": None, "candidates": ["h", "v", "w2"]}
    check_same_model(ours, "local_vim_tiny_search", ckpt, "x")
    refusal = r'^x is a search over the candidates h v w2, this model searches over h v w3: give --model-kwargs ' \
              r'"candidates=\[h, v, w2\]", as its run did$'
    with pytest.raises(CheckpointError, match=refusal):
        check_same_model(other, "local_vim_tiny_search", ckpt, "x")


def test_a_supernet_checkpoint_from_before_candidates_were_saved_searched_the_original_eight():
    """A supernet's training checkpoint written before `candidates` was recorded (`directions: None`, no entry) could
    only search the 8 originals: a supernet over 8 others (same keys and shapes) is refused, the default takes it."""
    old = {"model_name": "local_vim_tiny_search", "directions": None, "config": {}}
    check_same_model(timm.create_model("local_vim_tiny_search", **SMALL), "local_vim_tiny_search", old, "x")
    others = timm.create_model("local_vim_tiny_search", candidates=["h", "h_flip", "v", "v_flip", "w3", "w3_flip",
                                                                    "w5", "w5_flip"], **SMALL)
    with pytest.raises(CheckpointError, match=r"^x is a search over the candidates h h_flip v v_flip w2 w2_flip w7 "
                                              r"w7_flip, this model searches over .* w5_flip"):
        check_same_model(others, "local_vim_tiny_search", old, "x")
    # its run's model_kwargs name the candidates (as vis_search_prob.py reads them): those, not the original 8
    three = ["h", "v_flip", "w3"]
    recorded = dict(old, config={"model_kwargs": {"candidates": three}})
    check_same_model(timm.create_model("local_vim_tiny_search", candidates=three, **SMALL), "local_vim_tiny_search",
                     recorded, "x")
    with pytest.raises(CheckpointError, match=r"^x is a search over the candidates h v_flip w3, this model searches "
                                              r"over h v w3"):
        check_same_model(timm.create_model("local_vim_tiny_search", candidates=["h", "v", "w3"], **SMALL),
                         "local_vim_tiny_search", recorded, "x")


def test_resume_refuses_a_supernet_of_other_candidates(tmp_path):
    """End to end: the training checkpoint records the candidates; resuming with another list of the same length
    stops in one line, and with the run's list it continues."""
    def supernet(candidates: str) -> list[str]:
        return [*LOCAL_VIM[:3], "local_vim_tiny_search", "--model-kwargs", "embed_dim=16", "patch_size=4", "depth=2",
                f"candidates=[{candidates}]", *LOCAL_VIM[7:], "--output", str(tmp_path)]

    run_tool("train.py", *supernet("h, v_flip"), "--experiment", "run")
    last = tmp_path / "run" / "last.pth.tar"
    proc = run_tool("train.py", *supernet("h, v"), "--epochs", "2", "--resume", str(last), check=False)
    assert_one_line_error(proc, f"{last} is a search over the candidates h v_flip, this model searches over h v: "
                                f'give --model-kwargs "candidates=[h, v_flip]", as its run did')
    run_tool("train.py", *supernet("h, v_flip"), "--epochs", "2", "--resume", str(last))
