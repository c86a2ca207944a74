"""tools/vis_search_prob.py as a researcher meets it: checkpoints that are not the end of their search, a run's
folder given for its checkpoint, an --out that names a file, and a heat map whose numbers tell the chosen cells
from the dropped ones."""
import logging
import os
import runpy
import sys

import matplotlib.figure
import pytest
import timm
import torch
import yaml

import classification  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError
from classification.models.multi_scan import MultiScan
from classification.search import extract as extraction
from classification.search.extract import extract

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a search still near uniform: top-4 is h, v_flip, w2, w7; v_flip (chosen, 0.12537) and w7_flip (dropped, 0.12462)
# read alike to 3 decimals
NEAR_UNIFORM = [0.006, -0.006, -0.005, 0.003, 0.004, -0.004, 0.005, -0.003]


@pytest.fixture(scope="module")
def supernet_weights():
    torch.manual_seed(0)
    model = timm.create_model("local_vim_tiny_search", depth=2, embed_dim=16)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, MultiScan)):
            layer.weights.copy_(torch.tensor(NEAR_UNIFORM).view(8, 1, 1, 1))
    return model.state_dict()


def save_run_checkpoint(path, weights, epoch, step=None, epochs=3):
    torch.save({"model": weights, "ema_model": None, "epoch": epoch, "step": step, "steps_per_epoch": 44,
                "model_name": "local_vim_tiny_search", "config": {"epochs": epochs}}, path)
    return str(path)


def vis(monkeypatch, capsys, *argv):
    """Run the tool; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["vis_search_prob.py", *argv])
    try:
        runpy.run_path(os.path.join(REPO, "tools", "vis_search_prob.py"), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("epoch, step, epochs, note", [
    (1, 22, 3, "saved in the middle of epoch 1 of epochs 0-2, after its step 22"),   # an interrupted run's last
    (0, None, 3, "saved after epoch 0 of epochs 0-2"),                                 # an early best.pth.tar
    (2, None, 3, None),                                                                # the run's end
    (2, 44, 3, None),                                      # the last epoch trained whole, its validation failed
])
def test_a_checkpoint_before_the_end_of_its_search_is_named_so(supernet_weights, tmp_path, monkeypatch, capsys,
                                                               epoch, step, epochs, note):
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", supernet_weights, epoch, step, epochs)
    assert extraction.unfinished_search(torch.load(ckpt, weights_only=True)) == note
    assert extract(ckpt, out_dir=str(tmp_path / "api"))["unfinished"] == note
    status, printed, err = vis(monkeypatch, capsys, ckpt, "--out", str(tmp_path / "cli"))
    assert status == 0 and len(printed.splitlines()) == 4               # the original's printout is unchanged
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == ([f"note: {ckpt} is not the end of its search run ({note}): these directions are the search's "
                      f"state then, not its result"] if note else [])
    with open(tmp_path / "cli" / "directions.yaml") as f:
        record = yaml.safe_load(f)["searched_from"]
    assert record == {"checkpoint": ckpt, "weights": "model", "epoch": epoch, "epochs": epochs,
                      "finished": note is None, **({"unfinished": note} if note else {})}


def test_a_checkpoint_of_the_original_code_is_not_recorded_as_a_finished_search(supernet_weights, tmp_path):
    """The original's checkpoints hold the epoch but not the run's length: whether the search had finished is
    unknown, and the directions file does not claim it had."""
    path = tmp_path / "last.pth.tar"
    torch.save({"model": supernet_weights, "ema_model": None, "epoch": 4, "optimizer": None}, path)
    extract(str(path), out_dir=str(tmp_path / "out"))
    with open(tmp_path / "out" / "directions.yaml") as f:
        record = yaml.safe_load(f)["searched_from"]
    assert record == {"checkpoint": str(path), "weights": "model", "epoch": 4}


def test_released_weights_carry_no_search_progress(supernet_weights, tmp_path):
    assert extraction.unfinished_search({"state_dict": supernet_weights}) is None
    torch.save({"state_dict": supernet_weights}, tmp_path / "released.pth")
    extract(str(tmp_path / "released.pth"))
    with open(tmp_path / "directions.yaml") as f:
        assert yaml.safe_load(f)["searched_from"] == {"checkpoint": str(tmp_path / "released.pth"), "weights": "model"}


def test_a_checkpoint_url_is_extracted_into_the_current_folder_and_recorded(supernet_weights, tmp_path, monkeypatch):
    """Guards against a URL taken for a local path (checkpoints load from http(s) URLs): the default --out was its
    'folder' ./https:/example.com/runs, created and written into, and searched_from recorded the URL under the current
    directory."""
    url = "https://example.com/runs/last.pth.tar"
    ckpt = {"model": supernet_weights, "ema_model": None, "epoch": 2, "step": None, "steps_per_epoch": 44,
            "model_name": "local_vim_tiny_search", "config": {"epochs": 3}}
    monkeypatch.setattr(extraction, "load_checkpoint", lambda path, trust=False: ckpt if path == url else {})
    monkeypatch.chdir(tmp_path)
    result = extract(url)
    assert result["directions_file"] == str(tmp_path / "directions.yaml")
    assert sorted(os.listdir(tmp_path)) == ["directions.yaml", "search_probs.png"]
    with open(tmp_path / "directions.yaml") as f:
        assert yaml.safe_load(f)["searched_from"]["checkpoint"] == url


def test_a_run_folder_is_refused_naming_the_checkpoint_to_give(tmp_path, monkeypatch, capsys):
    (tmp_path / "last.pth.tar").write_bytes(b"")
    status, _, err = vis(monkeypatch, capsys, str(tmp_path))
    assert status == 2
    assert err.strip() == (f"error: {tmp_path} is a folder: give a checkpoint file in it, e.g. {tmp_path}/last.pth.tar "
                           f"(last.pth.tar)")
    with pytest.raises(CheckpointError, match="is a folder"):
        extract(str(tmp_path))


def test_an_out_that_names_a_file_is_refused_before_anything_is_written(supernet_weights, tmp_path, monkeypatch,
                                                                        capsys):
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", supernet_weights, 2)
    status, _, err = vis(monkeypatch, capsys, ckpt, "--out", ckpt)
    assert status == 2 and err.strip() == (f"error: --out {ckpt}: is a file; --out names the folder that gets "
                                           f"directions.yaml and search_probs.png")
    new_yaml = tmp_path / "searched" / "directions.yaml"
    status, _, err = vis(monkeypatch, capsys, ckpt, "--out", str(new_yaml))
    assert status == 2 and err.strip() == (f"error: --out {new_yaml}: names a file; --out is the folder that gets "
                                           f"directions.yaml and search_probs.png (e.g. --out {new_yaml.parent})")
    assert sorted(os.listdir(tmp_path)) == ["last.pth.tar"]


def test_a_folder_that_cannot_be_written_is_named_with_the_file_not_the_temporary_one(supernet_weights, tmp_path,
                                                                                      monkeypatch, capsys):
    """Guards against the name of the temporary file a write goes through in the error (`Permission denied:
    RUN/.tmp-x1y2.yaml`, a file that never exists): the error names directions.yaml or search_probs.png, and for the
    default --out (the checkpoint's folder, e.g. a shared read-only one) the way out."""
    import tempfile

    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", supernet_weights, 2)
    denied = os.path.join(tmp_path, ".tmp-x1y2.yaml")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", denied)

    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "mkstemp", read_only)
        status, _, err = vis(monkeypatch, capsys, ckpt)
    assert status == 2 and err.strip() == (f"error: cannot write {tmp_path}/directions.yaml: Permission denied; give "
                                           f"--out a folder you can write")
    (tmp_path / "out" / "search_probs.png").mkdir(parents=True)   # a folder where the heat map goes
    status, _, err = vis(monkeypatch, capsys, ckpt, "--out", str(tmp_path / "out"))
    assert status == 2 and err.strip() == f"error: cannot write {tmp_path}/out/search_probs.png: Is a directory"


def test_heat_map_numbers_tell_chosen_cells_from_dropped_ones(supernet_weights, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: drawn.append([t.get_text() for t in fig.axes[0].texts]))
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", supernet_weights, 2)
    result = extract(ckpt, topk=4, out_dir=str(tmp_path))
    probs = result["probs"][0].tolist()
    assert result["directions"][0] == ["h", "v_flip", "w2", "w7"]
    shown = drawn[0][:8]                                                # layer 0, candidates in canonical order
    assert shown == [f"{p:.4f}" for p in probs]
    assert f"{probs[3]:.3f}" == f"{probs[7]:.3f}"                       # what 3 decimals would have shown
    chosen = {shown[i] for i in (0, 3, 4, 6)}
    dropped = {shown[i] for i in (1, 2, 5, 7)}
    assert not chosen & dropped                                         # no chosen cell reads like a dropped one


def test_a_supernet_name_other_than_the_checkpoints_is_refused(supernet_weights, tmp_path, monkeypatch, capsys):
    """--supernet names the supernet of a file that does not record it: another family's name was written into
    directions.yaml for a LocalVim search."""
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", supernet_weights, 2)
    out = str(tmp_path / "o")
    status, _, err = vis(monkeypatch, capsys, ckpt, "--supernet", "local_vssm_tiny_search", "--out", out)
    assert status == 2 and err == (f"error: {ckpt} is a checkpoint of local_vim_tiny_search, not of "
                                   f"local_vssm_tiny_search: leave out --supernet (it names the supernet of a file "
                                   f"that does not record it)\n")
    assert not (tmp_path / "o").exists()
    status, _, _ = vis(monkeypatch, capsys, ckpt, "--supernet", "timm_local_vim_tiny_search", "--out", out)
    assert status == 0


@pytest.mark.parametrize("name, other", [
    ("local_vim_tiny_search", "local_vssm_tiny_search"),
    ("local_vssm_tiny_search", "timm_local_vim_tiny_search"),
    ("local_vssm_tiny_search", "local_vssm_small_search"),
    ("local_vssm_tiny_search", "local_vim_tiny_search.untrained"),
])
def test_a_supernet_name_of_other_search_layers_is_refused_for_a_file_that_records_none(
        name, other, tmp_path, monkeypatch, capsys):
    """The original code's checkpoints record no model name, so --supernet is the user's word: a LocalVMamba name for
    a LocalVim search (or back), or LocalVMamba-S's for a LocalVMamba-T search, went into directions.yaml, and
    training the searched model with it then warned that the directions came from another family's supernet or
    were searched for other stage depths."""
    weights = timm.create_model(name).state_dict()
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": weights, "ema_model": None, "epoch": 4, "optimizer": None}, ckpt)
    out = str(tmp_path / "o")
    status, _, err = vis(monkeypatch, capsys, str(ckpt), "--supernet", other, "--out", out)
    found = [key for key in weights if key.endswith("multi_scan.weights")]
    assert status == 2 and err.startswith(f"error: {ckpt}: its {len(found)} search layers ({found[0]} ... "
                                          f"{found[-1]}) are not those of {other} (")
    assert not (tmp_path / "o").exists()
    status, _, _ = vis(monkeypatch, capsys, str(ckpt), "--supernet", name, "--out", out)
    assert status == 0 and yaml.safe_load(open(os.path.join(out, "directions.yaml")))["supernet"] == name


def test_search_weights_that_are_not_finite_are_refused_naming_the_layer(supernet_weights, tmp_path,
                                                                         monkeypatch, capsys):
    """A diverged search (a NaN or +inf weight: every probability of its layer NaN) gave a directions.yaml whose lists
    torch.topk had picked among NaN (`w2 w2_flip w7 w7_flip` in every such layer), with exit status 0."""
    weights = dict(supernet_weights)
    weights["layers.0.mixer.multi_scan.weights"] = torch.tensor([0., float("nan"), 1., 2., 3., 4., 5., 6.]).view(
        8, 1, 1, 1)
    weights["layers.1.mixer.multi_scan.weights"] = torch.tensor([float("inf"), 0., 0., 0., 0., 0., 0., 0.]).view(
        8, 1, 1, 1)
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", weights, 2)
    out = tmp_path / "out"
    status, printed, err = vis(monkeypatch, capsys, ckpt, "--out", str(out))
    assert status == 2 and printed == ""
    assert err == (f"error: {ckpt}: layers.0.mixer.multi_scan.weights holds search weights that are not finite "
                   f"(h_flip=nan) (and 1 more search layer): the search diverged before this checkpoint; extract "
                   f"from an earlier one (checkpoint-N.pth.tar)\n")
    assert not out.exists()
    weights["layers.0.mixer.multi_scan.weights"] = supernet_weights["layers.0.mixer.multi_scan.weights"]
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", weights, 2)
    with pytest.raises(CheckpointError, match=r"layers\.1\.mixer\.multi_scan\.weights holds search weights that are "
                                              r"not finite \(h=inf\): the search diverged"):
        extract(ckpt, out_dir=str(out))
    # a -inf weight is a candidate of probability 0: the others are ranked as usual
    weights["layers.1.mixer.multi_scan.weights"] = torch.tensor([float("-inf"), 0., 3., 0., 2., 0., 1., 4.]).view(
        8, 1, 1, 1)
    ckpt = save_run_checkpoint(tmp_path / "last.pth.tar", weights, 2)
    assert extract(ckpt, out_dir=str(out))["directions"][1] == ["v", "w2", "w7", "w7_flip"]


@pytest.mark.parametrize("given", ["local_vssm_tiny_search", "timm_local_vssm_tiny_search",
                                   "local_vssm_tiny_search.untrained"])
def test_the_supernet_named_in_the_originals_spelling_is_recorded_as_registered(given, tmp_path, monkeypatch,
                                                                                capsys, localmamba_log):
    """`--supernet timm_local_vssm_tiny_search` (the original README's spelling) for a file of the original code went
    into directions.yaml as given, and the searched model's build then no longer warned that its stages split the
    layers otherwise than the search's (2, 2, 9, 2): the check knows the supernet by its registered name."""
    from classification.engine.config import parse_args
    from classification.engine.model_builder import build_model

    weights = timm.create_model("local_vssm_tiny_search", dims=4).state_dict()
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": weights, "ema_model": None, "epoch": 99, "optimizer": None}, ckpt)
    out = tmp_path / "o"
    status, _, _ = vis(monkeypatch, capsys, str(ckpt), "--supernet", given, "--out", str(out))
    assert status == 0
    path = out / "directions.yaml"
    assert yaml.safe_load(path.read_text())["supernet"] == "local_vssm_tiny_search"
    cfg = parse_args(["--model", "local_vssm_tiny", "--directions", str(path), "--model-kwargs", "dims=4",
                      "depths=[2,2,2,9]", "--img-size", "32"])
    cfg.num_classes = 10
    localmamba_log.clear()
    build_model(cfg)
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path} was searched with stage depths (2, 2, 9, 2), local_vssm_tiny has (2, 2, 2, 9): its "
                        f"stages take the directions searched for other stages' blocks"]


@pytest.mark.parametrize("name, kwargs, table, other", [   # other: a model its layer count fits, and its depths
    ("local_vim_tiny_search", {"embed_dim": 8}, "LOCAL_VIM_TINY_DIRECTIONS", ("local_vssm_tiny", (2, 2, 14, 2))),
    ("local_vssm_tiny_search", {"dims": 4}, "LOCAL_VSSM_TINY_DIRECTIONS", ("local_vim_tiny", None)),
    ("local_vssm_small_search", {"dims": 4}, "LOCAL_VSSM_SMALL_DIRECTIONS", ("local_vssm_small", (3, 3, 25, 2))),
])
def test_a_file_of_the_original_code_names_the_supernet_of_its_search_layers(name, kwargs, table, other, tmp_path):
    """A checkpoint of the original code records no model name: its directions file said `supernet: null`, so a model
    of the other family, or with stages that split the layers otherwise, took its directions without the warning
    the README promises. The supernet is the registered one with the file's search layers; the released tables
    come back from weights that rank them first."""
    from classification.models import directions as tables
    from classification.models.directions import CANDIDATES, directions_source_warnings, model_family

    released = [list(layer) for layer in getattr(tables, table)]
    weights = timm.create_model(name, **kwargs).state_dict()
    keys = [key for key in weights if key.endswith("multi_scan.weights")]
    for key, layer in zip(keys, released, strict=True):
        weights[key] = torch.tensor([0.01 if c in layer else 0.0 for c in CANDIDATES]).view(8, 1, 1, 1)
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": weights, "ema_model": None, "epoch": 99, "optimizer": None}, ckpt)
    result = extract(str(ckpt), out_dir=str(tmp_path))
    assert result["directions"] == released
    path = tmp_path / "directions.yaml"
    assert yaml.safe_load(path.read_text())["supernet"] == name
    model, depths = other
    family = model_family(model)
    warning = directions_source_warnings(path, model, family, depths)
    if family != model_family(name):
        assert warning == [f"{path} holds the directions searched by {name} (a {model_family(name)} supernet), "
                           f"but {model} is a {family} model: its layers take them as given"]
    else:
        assert warning == [f"{path} was searched with stage depths (2, 2, 27, 2), {model} has {depths}: its stages "
                           f"take the directions searched for other stages' blocks"]


def test_a_file_whose_search_layers_no_registered_supernet_has_names_none(supernet_weights, tmp_path):
    """A depth-2 search (the fixture's) matches no registered supernet: its file names none, as before."""
    torch.save({"model": supernet_weights, "ema_model": None, "epoch": 1, "optimizer": None}, tmp_path / "c.pth")
    extract(str(tmp_path / "c.pth"))
    assert yaml.safe_load((tmp_path / "directions.yaml").read_text())["supernet"] is None


@pytest.mark.parametrize("given", ["local_vim_tiny", "timm_local_vssm_tiny", "resnet18"])
def test_a_supernet_name_of_a_model_without_search_weights_is_refused_as_such(supernet_weights, tmp_path,
                                                                              monkeypatch, capsys, given):
    """--supernet naming a model of fixed directions was refused as one with other search layers, "(0 ...)"."""
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": supernet_weights, "ema_model": None, "epoch": 4, "optimizer": None}, ckpt)
    status, _, err = vis(monkeypatch, capsys, str(ckpt), "--supernet", given, "--out", str(tmp_path / "o"))
    assert status == 2 and err.splitlines() == [
        f"error: --supernet {given}: not a search supernet (its layers have fixed directions): give the supernet "
        f"{ckpt} was trained as (local_vim_tiny_search, local_vssm_tiny_search, local_vssm_small_search), or leave "
        f"out --supernet"]
    assert not (tmp_path / "o").exists()


def test_a_supernet_name_not_registered_here_is_recorded_with_a_warning(supernet_weights, tmp_path, localmamba_log):
    """A misspelt --supernet went into directions.yaml silently, and the checks of the model trained with the file
    then knew neither its family's supernet nor its stage depths."""
    torch.save({"model": supernet_weights, "ema_model": None, "epoch": 4, "optimizer": None}, tmp_path / "c.pth")
    with localmamba_log.at_level(logging.WARNING, logger="localmamba"):
        extract(str(tmp_path / "c.pth"), supernet="local_vim_tiny_serch")
    assert yaml.safe_load((tmp_path / "directions.yaml").read_text())["supernet"] == "local_vim_tiny_serch"
    assert [r.getMessage() for r in localmamba_log.records] == [
        "--supernet local_vim_tiny_serch: not a model registered here, recorded in directions.yaml as given (the model "
        "trained with the file is not checked against its family and depths); did you mean local_vim_tiny_search?"]
