"""Search end to end on digits: train a tiny supernet, extract its directions, train and evaluate the searched model."""
import csv
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import yaml

from classification.common.checkpoint_io import CheckpointError
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.optim import param_groups
from classification.engine.trainer import train
from classification.models.directions import load_directions, save_directions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CANDIDATES = ["h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip"]
SMALL = ["--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16", "depth=2", "--img-size", "16"]
RUN = ["--dataset", "digits", *SMALL, "-b", "256", "--epochs", "1", "--opt", "adamw", "--lr", "5e-3",
       "--weight-decay", "0.04", "--sched", "cosine", "--warmup-epochs", "0", "-j", "0", "--log-interval", "2"]


def by_hand(weights, k=4):
    """Top-k candidates of one layer computed with numpy: softmax, k largest, canonical order."""
    w = weights.reshape(-1).double().numpy()
    p = np.exp(w - w.max()) / np.exp(w - w.max()).sum()
    return [CANDIDATES[i] for i in sorted(np.argsort(-p, kind="stable")[:k])], p


def vis(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["vis_search_prob.py", *argv])
    runpy.run_path(os.path.join(REPO, "tools", "vis_search_prob.py"), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    train(parse_args([*RUN, "--model", "timm_local_vim_tiny_search", "--model-ema", "--model-ema-decay", "0.5",
                      "--output", str(out), "--experiment", "supernet"]))
    return out, out / "supernet"


def test_search_weights_train_jointly_and_are_logged_each_epoch(supernet):
    _, exp = supernet
    ckpt = torch.load(exp / "last.pth.tar", map_location="cpu", weights_only=True)
    names = [k for k in ckpt["model"] if k.endswith("multi_scan.weights")]
    assert names == ["layers.0.mixer.multi_scan.weights", "layers.1.mixer.multi_scan.weights"]
    assert all(ckpt["model"][n].shape == (8, 1, 1, 1) for n in names)
    # they moved during training (initialised at 1e-3 * randn, so |w| < 0.01 before)
    assert max(ckpt["model"][n].abs().max().item() for n in names) > 0.01
    with open(exp / "search_probs.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "layer", *CANDIDATES] and [r[:2] for r in rows[1:]] == [["0", "0"], ["0", "1"]]
    for row, name in zip(rows[1:], names):
        _, p = by_hand(ckpt["model"][name])
        assert np.allclose([float(x) for x in row[2:]], p, atol=1e-6)
    log = open(next(exp.glob("log_*.txt"))).read()
    assert "Search probabilities:" in log and "layer  1: h=" in log


def test_search_weights_are_weight_decayed_as_the_original(supernet):
    import timm

    model = timm.create_model("local_vim_tiny_search", num_classes=10, img_size=16, patch_size=4, embed_dim=16,
                              depth=2)
    no_decay, decay = param_groups(model, 1e-3, 0.04)
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in decay["params"])}
    assert {"layers.0.mixer.multi_scan.weights", "layers.1.mixer.multi_scan.weights"} <= decayed
    assert any("A_log" in n for n in decayed)


def test_extraction_prints_as_the_original_and_writes_the_file(supernet, monkeypatch, capsys):
    out, exp = supernet
    ckpt = torch.load(exp / "last.pth.tar", map_location="cpu", weights_only=True)
    for use_ema, key in ((False, "model"), (True, "ema_model")):
        dest = out / f"extracted_{key}"
        printed = vis(monkeypatch, capsys, str(exp / "last.pth.tar"), "--out", str(dest),
                      *(["--model-ema"] if use_ema else [])).splitlines()
        weights = [v for k, v in ckpt[key].items() if k.endswith("multi_scan.weights")]
        expected = [by_hand(w)[0] for w in weights]
        assert printed[:2] == [str(w.view(-1).softmax(-1)) for w in weights]
        assert printed[2:] == [str(layer) + "," for layer in expected]
        assert load_directions(dest / "directions.yaml") == expected
        with open(dest / "directions.yaml") as f:
            meta = yaml.safe_load(f)
        assert (meta["supernet"], meta["topk"]) == ("local_vim_tiny_search", 4)
        assert meta["searched_from"] == {
            "checkpoint": str(exp / "last.pth.tar"), "weights": key, "epoch": 0, "epochs": 1, "finished": True,
            "model_kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2}}
        assert (dest / "search_probs.png").read_bytes()[:4] == b"\x89PNG"
    printed = vis(monkeypatch, capsys, str(exp / "last.pth.tar"), "--topk", "2", "--out", str(out / "k2"))
    assert printed.splitlines()[2:] == [str(by_hand(w, 2)[0]) + "," for w in weights]


def test_searched_model_trains_from_the_file_and_evaluates(supernet, monkeypatch, capsys):
    out, exp = supernet
    vis(monkeypatch, capsys, str(exp / "last.pth.tar"), "--out", str(out / "chosen"))
    directions = str(out / "chosen" / "directions.yaml")
    metrics = train(parse_args([*RUN, "--model", "local_vim_tiny", "--directions", directions,
                                "--output", str(out), "--experiment", "searched"]))
    ckpt = torch.load(out / "searched" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert not any(k.endswith("multi_scan.weights") for k in ckpt["model"])
    assert ckpt["config"]["directions"] == directions
    evaluated = evaluate(parse_args([*RUN, "--model", "local_vim_tiny", "--directions", directions,
                                     "--resume", str(out / "searched" / "last.pth.tar"), "--output", str(out),
                                     "--smoothing", "0.1"]))
    assert evaluated["top1"] == metrics["top1"] and evaluated["top5"] == metrics["top5"]

    import timm

    model = timm.create_model("local_vim_tiny", num_classes=10, img_size=16, patch_size=4, embed_dim=16, depth=2,
                              directions=directions)
    assert [list(d) for d in model.directions] == load_directions(directions)
    model.load_state_dict(ckpt["model"])  # the trained weights fit a model built from the file


def test_a_directions_file_gone_since_training_names_the_checkpoint_that_records_them(supernet, monkeypatch, capsys):
    """Guards against a bare 'not found' for the run's directions file (moved or deleted after training): the
    evaluated or resumed checkpoint records its directions, and the error names it as the --directions to give."""
    out, exp = supernet
    vis(monkeypatch, capsys, str(exp / "last.pth.tar"), "--out", str(out / "moved_away"))
    directions = out / "moved_away" / "directions.yaml"
    searched = [*RUN, "--model", "local_vim_tiny", "--directions", str(directions), "--output", str(out)]
    trained = train(parse_args([*searched, "--experiment", "gone"]))
    last = str(out / "gone" / "last.pth.tar")
    directions.unlink()
    hint = f"directions file not found: {directions}; {last} records the directions it was trained with: give " \
           f"--directions {last}"
    with pytest.raises(ConfigError, match=re.escape(hint)):
        evaluate(parse_args([*searched, "--resume", last]))
    with pytest.raises(ConfigError, match=re.escape(hint)):
        train(parse_args([*searched, "--experiment", "gone", "--resume", "auto", "--epochs", "2"]))
    with pytest.raises(FileNotFoundError, match=f"directions file not found: {re.escape(str(directions))}$"):
        train(parse_args([*searched, "--experiment", "fresh"]))  # nothing resumed: nothing else to name
    named = [*RUN, "--model", "local_vim_tiny", "--directions", last, "--output", str(out), "--resume", last]
    assert evaluate(parse_args(named))["top1"] == trained["top1"]


def test_directions_file_round_trip(tmp_path):
    table = [["h", "v_flip", "w7", "w7_flip"], ["h_flip", "w2_flip", "w7", "w7_flip"]]
    path = tmp_path / "d.yaml"
    save_directions(path, table, supernet="local_vim_tiny_search", topk=4)
    assert load_directions(path) == table
    with open(path) as f:
        assert yaml.safe_load(f) == {"supernet": "local_vim_tiny_search", "topk": 4, "directions": table}


@pytest.mark.parametrize("text, pattern", [
    ("directions: [[h, v], [h, v], [h, v]]\n", r"has 3 layers, but the model has 2 layers"),
    ("directions: [[h, v], [h, diagonal]]\n", r"bad_directions.yaml: layer 1: unknown scan direction 'diagonal'"),
    ("directions: []\n", r"bad_directions.yaml: holds no layers"),
    ("supernet: x\n", r'no "directions" key'),
    ("directions: [[h, v]\n", r"not a valid YAML"),
    ("directions: [[h, h], [v]]\n", r"repeats a direction"),
])
def test_bad_directions_files_are_refused_naming_the_file(tmp_path, text, pattern):
    path = tmp_path / "bad_directions.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        train(parse_args([*RUN, "--model", "local_vim_tiny", "--directions", str(path),
                          "--output", str(tmp_path)]))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, kind", [("epoch,layer,h,v\n0,0,0.5,0.5\n", "a YAML str"), ("0.125\n", "a YAML float"),
                                        ("", "nothing (an empty file)")])
def test_a_file_that_is_not_a_directions_file_is_named_so(tmp_path, text, kind):
    """The run folder's search_probs.csv given for its directions.yaml was refused as '"directions" must be a list
    of per-layer lists of direction names', as if it were a directions file with a wrong entry."""
    path = tmp_path / "search_probs.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_directions(path)
    assert str(info.value) == (f"{path}: not a directions file: its text reads as {kind}, not as the mapping "
                               f"vis_search_prob.py writes (directions: one list per layer) or a list of lists")


@pytest.mark.parametrize("supernet, model_kwargs, model, expected", [
    ("local_vim_tiny_search", {"patch_size": 4, "depth": 4}, "local_vim_tiny", "depth=4"),
    ("local_vssm_tiny_search", {"depths": [1, 1, 2, 1]}, "local_vssm_tiny", "depths=[1, 1, 2, 1]"),
])
def test_a_searched_file_of_another_depth_names_its_supernets_depth(tmp_path, supernet, model_kwargs, model,
                                                                    expected):
    """The file records its supernet's model_kwargs: the refusal said 'LocalVim: depth=N; LocalVMamba: depths
    summing to N', where a LocalVMamba model of another stage split would take it with a warning."""
    n = sum(model_kwargs.get("depths", [])) or model_kwargs["depth"]
    path = tmp_path / "directions.yaml"
    save_directions(path, [["h", "v"]] * n, supernet=supernet, topk=2, searched_from={"model_kwargs": model_kwargs})
    with pytest.raises(ValueError) as info:
        timm.create_model(model, directions=str(path))
    assert str(info.value).endswith(f"{path}: has {n} layers, but the model has "
                                    f"{20 if 'vim' in model else 15} layers: build the model with the {n} layers "
                                    f"of the supernet that searched them ({expected})")


def test_extraction_refuses_a_model_without_search_weights(tmp_path):
    from classification.search.extract import extract

    path = tmp_path / "plain.pth.tar"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match=f"{path}: no '\\*multi_scan.weights' entries"):
        extract(str(path))


def test_extraction_does_not_replace_other_directions_unless_asked(supernet, monkeypatch, capsys):
    """A directions.yaml a searched model may have been trained with is not replaced by other directions (top-2
    here) without --overwrite; the same directions again are written as before."""
    from classification.search.extract import extract

    out, exp = supernet
    dest = out / "kept"
    first = extract(str(exp / "last.pth.tar"), 4, str(dest))["directions"]
    assert extract(str(exp / "last.pth.tar"), 4, str(dest))["directions"] == first
    with pytest.raises(FileExistsError, match="directions.yaml already holds other directions .* give another --out, "
                                              "or --overwrite to replace it"):
        extract(str(exp / "last.pth.tar"), 2, str(dest))
    assert load_directions(dest / "directions.yaml") == first
    vis(monkeypatch, capsys, str(exp / "last.pth.tar"), "--topk", "2", "--out", str(dest), "--overwrite")
    assert [len(layer) for layer in load_directions(dest / "directions.yaml")] == [2] * len(first)


MY_SCANS = '''
import torch

from classification.models import register_direction


def snake(grid):
    tokens = torch.arange(grid[0] * grid[1]).view(grid).clone()
    tokens[1::2] = tokens[1::2].flip(1)
    return tokens.reshape(-1)


register_direction('snake', snake)
'''


def test_a_direction_of_ones_own_reaches_every_tool_through_the_environment(tmp_path):
    """README's tools journey, each tool its own process: a search over candidates that include a registered
    direction, its extraction, and the searched model's training, with the direction module named only in
    LOCALMAMBA_DIRECTION_MODULES (and found on PYTHONPATH)."""
    (tmp_path / "my_scans.py").write_text(MY_SCANS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO]),
           "LOCALMAMBA_DIRECTION_MODULES": "my_scans", "OMP_NUM_THREADS": "1"}

    def tool(script, *args):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args], capture_output=True,
                              text=True, env=env, cwd=str(tmp_path), timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    out = str(tmp_path / "runs")
    tool("train.py", *RUN, "--model", "local_vim_tiny_search", "--model-kwargs",
         "candidates=[h, v, snake, snake_flip]", "--output", out, "--experiment", "search")
    tool("vis_search_prob.py", os.path.join(out, "search", "last.pth.tar"), "--topk", "2", "--out",
         os.path.join(out, "search"))
    directions = load_directions(os.path.join(out, "search", "directions.yaml"))  # one list per layer
    assert len(directions) == 2 and all(len(layer) == 2 for layer in directions)
    assert {name for layer in directions for name in layer} <= {"h", "v", "snake", "snake_flip"}
    searched = os.path.join(out, "search", "directions.yaml")
    tool("train.py", *RUN, "--model", "local_vim_tiny", "--directions", searched, "--output", out,
         "--experiment", "searched")
    ckpt = torch.load(os.path.join(out, "searched", "last.pth.tar"), map_location="cpu", weights_only=True)
    assert ckpt["directions"] == directions
