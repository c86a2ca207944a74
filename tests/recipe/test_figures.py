"""The README's figures come from the code: scan-order numbers are scan_maps' positions, the speed chart reads the
README's own table, the example heat map is seeded."""
import os

import numpy as np
import pytest

from classification import figures
from classification.models.scan_maps import scan_index

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name, grid, expected", [
    ("h", (3, 4), np.arange(12).reshape(3, 4)),
    ("h_flip", (2, 3), [[5, 4, 3], [2, 1, 0]]),
    ("v", (3, 4), [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]),
    ("v_flip", (2, 2), [[3, 1], [2, 0]]),
    ("w2", (4, 4), [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]),
    # 3x3 pads to 4x4: windows [0 1 3 4] [2 p 5 p] [6 7 p p] [8 p p p]; padding keeps its sequence positions
    ("w2", (3, 3), [[0, 1, 4], [2, 3, 6], [8, 9, 12]]),
    ("w2_flip", (3, 3), [[15, 14, 11], [13, 12, 9], [7, 6, 3]]),
])
def test_scan_order_grid_by_hand(name, grid, expected):
    np.testing.assert_array_equal(figures.scan_order_grid(name, grid), expected)


def test_drawn_numbers_are_scan_maps_positions(tmp_path):
    names, grid = ("h", "v_flip", "w2", "w3_flip"), (5, 6)
    fig = figures.draw_scan_orders(str(tmp_path / "orders.png"), names, grid, columns=2)
    assert (tmp_path / "orders.png").stat().st_size > 0
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(names)
    for ax, name in zip(panels, names):
        drawn = np.full(grid, -1)
        for text in ax.texts:
            x, y = text.get_position()
            drawn[int(y), int(x)] = int(text.get_text())
        table = scan_index(name, grid).tolist()
        for (i, j), position in np.ndenumerate(drawn):
            assert table[position] == i * grid[1] + j  # the token scan_maps puts at that position is this cell


def test_speed_chart_reads_the_readmes_table(tmp_path):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    settings, rows = figures.read_speed_table(readme)
    assert settings == ["inference b1", "inference b8", "train step b8"]
    by_name = {row["model"]: row for row in rows}
    assert {"local_vim_tiny", "local_vssm_tiny"} <= set(by_name)
    for row in rows:  # every figure is in the README as written
        for setting in settings:
            ratio, rate = row[setting]
            assert f"{ratio:g}" in readme and f"{rate:g} img/s" in readme
    assert by_name["local_vim_tiny"]["baseline"] == "deit_tiny_patch16_224"
    figures.draw_speed_chart(str(tmp_path / "speed.png"), settings, rows)
    assert (tmp_path / "speed.png").stat().st_size > 0
    with pytest.raises(ValueError):
        figures.read_speed_table("| model | baseline | a |\n|---|---|---|\nnothing\n")


def test_example_search_probs_are_seeded(tmp_path):
    small = dict(depth=6, embed_dim=16)   # the README's figure draws the whole 20-layer supernet
    first = figures.draw_example_search_probs(str(tmp_path / "a.png"), seed=3, **small)
    again = figures.draw_example_search_probs(str(tmp_path / "b.png"), seed=3, **small)
    other = figures.draw_example_search_probs(str(tmp_path / "c.png"), seed=4, **small)
    assert first == again != other
    assert len(first) == 6 and all(len(layer) == 4 for layer in first)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_run_curves_of_a_one_epoch_run_are_visible(tmp_path):
    from classification.engine.plotting import draw_run, read_csv

    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1,top5\n0,2.3,2.2,10,50\n"))
    fig = draw_run(metrics, {"epoch": [0.0], "step": [0.0], "lr": [1e-6]})
    loss, lr, acc = fig.axes
    for ax in (loss, lr, acc):
        for line in ax.get_lines():  # a single point drawn as a line without a marker is invisible
            assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "", "None", " ")
    assert [list(line.get_ydata()) for line in acc.get_lines()] == [[10.0], [50.0]]


def test_run_curves_draw_each_column_in_its_panel_at_the_end_of_its_epoch(tmp_path):
    """Loss panel: train then test loss; accuracy panel: top-1 then top-5; each epoch's figures at its end (epoch + 1),
    with the legend naming each line."""
    from classification.engine.plotting import draw_run, read_csv

    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1,top5\n"
                                                        "0,2.5,2.25,10,40\n1,2,1.75,20,60\n"))
    loss, _, acc = draw_run(metrics, None).axes
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in loss.get_lines()] == [
        ("train", [1.0, 2.0], [2.5, 2.0]), ("test", [1.0, 2.0], [2.25, 1.75])]
    assert [(line.get_label(), list(line.get_ydata())) for line in acc.get_lines()] == [
        ("top-1", [10.0, 20.0]), ("top-5", [40.0, 60.0])]


def test_run_curves_without_top5_and_with_a_missing_column(tmp_path):
    from classification.engine.config import ConfigError
    from classification.engine.plotting import draw_run, plot_run, read_csv

    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n1,2,1.9,12\n"))
    acc = draw_run(metrics, None).axes[2]
    assert [line.get_label() for line in acc.get_lines()] == ["top-1"]
    assert [list(line.get_ydata()) for line in acc.get_lines()] == [[10.0, 12.0]]
    bad = _write(tmp_path / "other.csv", "epoch,train_loss,top1\n0,2.3,10\n")
    with pytest.raises(ConfigError, match="test_loss"):
        plot_run(bad, str(tmp_path / "c.png"))


def test_run_curves_skip_the_partial_last_row_of_a_killed_run(tmp_path):
    from classification.engine.config import ConfigError
    from classification.engine.plotting import read_csv

    header = "epoch,train_loss,test_loss,top1,top5\n"
    path = _write(tmp_path / "metrics.csv", header + "0,2.3,2.2,10,50\n1,2.1,2.0,12,55\n2,2.0,")
    assert read_csv(path) == {"epoch": [0.0, 1.0], "train_loss": [2.3, 2.1], "test_loss": [2.2, 2.0],
                              "top1": [10.0, 12.0], "top5": [50.0, 55.0]}
    with pytest.raises(ConfigError, match="line 2"):
        read_csv(_write(tmp_path / "bad.csv", "epoch,lr\n0,abc\n"))


def test_run_curves_skip_the_header_the_original_code_wrote_again_at_each_start(tmp_path):
    """The original code's metrics.csv of a resumed run holds its header twice: plot_log refused it (`line 4: could
    not convert string to float: 'epoch'`)."""
    from classification.engine.plotting import read_csv

    header = "epoch,train_loss,test_loss,top1,top5\n"
    path = _write(tmp_path / "metrics.csv", header + "0,2.3,2.2,10,50\n1,2.1,2.0,12,55\n" + header + "2,2,1.9,14,60\n")
    assert read_csv(path) == {"epoch": [0.0, 1.0, 2.0], "train_loss": [2.3, 2.1, 2.0], "test_loss": [2.2, 2.0, 1.9],
                              "top1": [10.0, 12.0, 14.0], "top5": [50.0, 55.0, 60.0]}


@pytest.mark.parametrize("content", [b"model: [unclosed\n", b"\x80\x81 not text"])
def test_an_args_yaml_that_is_no_yaml_is_refused_in_one_line(tmp_path, content):
    """plot_log reads the run's args.yaml for model_ema: a broken one ended in yaml's traceback."""
    from classification.engine import plotting
    from classification.engine.config import ConfigError

    _write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n")
    (tmp_path / "args.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'args.yaml'}: not valid YAML \(.*\): it says whether"):
        plotting.plot_run(str(tmp_path))


def test_a_run_stopped_in_its_first_epoch_draws_its_learning_rates(tmp_path, monkeypatch):
    from classification.engine import plotting
    from classification.engine.config import ConfigError

    _write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1,top5\n")
    with pytest.raises(ConfigError, match="no epoch has finished"):
        plotting.plot_run(str(tmp_path))
    _write(tmp_path / "lr.csv", "epoch,step,lr\n0,0,0.1\n0,5,0.2\n")
    drawn = []
    monkeypatch.setattr(plotting, "draw_run", lambda *args, draw=plotting.draw_run, **kwargs: drawn.append(
        draw(*args, **kwargs)) or drawn[-1])
    assert plotting.plot_run(str(tmp_path)) == str(tmp_path / "curves.png")
    loss, rates, acc = drawn[0].axes
    assert [list(line.get_ydata()) for line in rates.get_lines()] == [[0.1, 0.2]]
    assert [t.get_text() for t in loss.texts + acc.texts] == ["no epoch finished yet"] * 2
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_learning_rate_is_drawn_against_epochs_across_a_resume_with_another_batch_size(tmp_path):
    """Epoch 0 ran 4 iterations (logged at 0, 2, 3), the resumed epoch 1 ran 2 (-b doubled: the schedule restarts
    at step 2): on the global step the curve would go back; on the epoch axis it moves forward."""
    from classification.engine.plotting import draw_run, epoch_positions, read_csv

    lr = read_csv(_write(tmp_path / "lr.csv", "epoch,step,lr\n0,0,1\n0,2,0.9\n0,3,0.8\n1,2,0.7\n1,3,0.6\n"))
    assert epoch_positions(lr["epoch"], lr["step"]) == [0.0, 0.5, 0.75, 1.0, 1.5]
    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n1,2,1.9,12\n"))
    loss, rates, acc = draw_run(metrics, lr).axes
    (curve,) = rates.get_lines()
    assert list(curve.get_xdata()) == [0.0, 0.5, 0.75, 1.0, 1.5]
    # epoch e's metrics at its end, e + 1, on the same axis (they were at e, the start of its learning rates)
    assert [list(line.get_xdata()) for line in loss.get_lines() + acc.get_lines()] == [[1.0, 2.0]] * 3
    assert {ax.get_xlabel() for ax in (loss, rates, acc)} == {"epochs trained"}


def test_the_learning_rate_of_an_epoch_in_progress_is_drawn_at_its_share_of_an_epoch(tmp_path):
    """A running training: epoch 0 ran 4 iterations, epoch 1 has done 2 of its 4 (no metrics row yet). Its rows were
    spread over the whole epoch (1.0, 1.5: half done drawn as nearly done); the finished epoch's length places them."""
    from classification.engine.plotting import draw_run, epoch_positions, read_csv

    lr = read_csv(_write(tmp_path / "lr.csv", "epoch,step,lr\n0,0,1\n0,2,0.9\n0,3,0.8\n1,4,0.7\n1,5,0.6\n"))
    assert epoch_positions(lr["epoch"], lr["step"], finished=[0.0]) == [0.0, 0.5, 0.75, 1.0, 1.25]
    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n"))
    (curve,) = draw_run(metrics, lr).axes[1].get_lines()
    assert list(curve.get_xdata()) == [0.0, 0.5, 0.75, 1.0, 1.25]


def test_the_learning_rate_of_a_first_epoch_in_progress_is_drawn_at_its_iterations(tmp_path):
    """No epoch has finished: nothing gives an epoch's length. The rows of 6 iterations done were drawn over
    0 .. 0.83 epochs, as if the epoch were nearly done; they are drawn at their iterations, on an axis that says so."""
    from classification.engine.plotting import draw_run, read_csv

    lr = read_csv(_write(tmp_path / "lr.csv", "epoch,step,lr\n0,0,0.1\n0,2,0.15\n0,5,0.2\n"))
    metrics = read_csv(_write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n"), allow_empty=True)
    rates = draw_run(metrics, lr).axes[1]
    (curve,) = rates.get_lines()
    assert list(curve.get_xdata()) == [0.0, 2.0, 5.0]
    assert rates.get_xlabel() == "iterations (no epoch finished yet)"


def test_an_interrupted_plot_leaves_the_previous_figure_whole(tmp_path, monkeypatch):
    """The figure was written in place: Ctrl-C (or a full disk) in the write left a half-written curves.png in
    place of the previous one. It is written to a temporary file, renamed when whole."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from classification.engine import plotting

    savefig, print_pil, saved_to = Figure.savefig, FigureCanvasAgg._print_pil, []

    def recorded_savefig(fig, target, *args, **kwargs):
        saved_to.append(target)
        return savefig(fig, target, *args, **kwargs)

    def interrupted(canvas, target, *args):  # the image's write begins, then Ctrl-C
        if target is not saved_to[-1]:  # a dry run of matplotlib's own
            return print_pil(canvas, target, *args)
        if isinstance(target, str):
            with open(target, "wb") as f:
                f.write(b"partial")
        else:
            target.write(b"partial")
        raise KeyboardInterrupt

    _write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n")
    (tmp_path / "curves.png").write_bytes(b"previous")
    monkeypatch.setattr(Figure, "savefig", recorded_savefig)
    monkeypatch.setattr(FigureCanvasAgg, "_print_pil", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plotting.plot_run(str(tmp_path))
    assert (tmp_path / "curves.png").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "metrics.csv"]


def test_the_curves_of_an_ema_run_say_whose_accuracy_they_show(tmp_path, monkeypatch):
    """metrics.csv's validation columns are the EMA's in a --model-ema run (its args.yaml says so)."""
    from classification.engine import plotting

    drawn = []
    monkeypatch.setattr(plotting, "draw_run", lambda *args, draw=plotting.draw_run, **kwargs: drawn.append(
        draw(*args, **kwargs)) or drawn[-1])
    _write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n")
    for ema in (False, True):
        (tmp_path / "args.yaml").write_text(f"model: local_vim_tiny\nmodel_ema: {str(ema).lower()}\n")
        plotting.plot_run(str(tmp_path))
    titles = [[ax.get_title() for ax in fig.axes] for fig in drawn]
    assert titles == [["loss", "learning rate (no lr.csv)", "accuracy (%)"],
                      ["loss (test: the EMA weights)", "learning rate (no lr.csv)", "accuracy (%) of the EMA weights"]]


def test_drawn_path_visits_the_cells_in_scan_order(tmp_path):
    """Each panel's line goes through the cells in the order of their scan positions (padding has no cell) and its
    dot marks position 0: a path drawn in row-major order looked the same for `h` and wrong for every other
    direction, unseen by the numbers' check."""
    names, grid = ("v_flip", "w2"), (3, 3)
    fig = figures.draw_scan_orders(str(tmp_path / "orders.png"), names, grid, columns=2)
    panels = [ax for ax in fig.axes if ax.get_title()]
    for ax, name in zip(panels, names):
        path, dot = ax.lines
        order = figures.scan_order_grid(name, grid)
        cells = sorted(((order[i, j], i, j) for i in range(3) for j in range(3)))
        assert list(zip(path.get_ydata(), path.get_xdata())) == [(i, j) for _, i, j in cells]
        assert (list(dot.get_ydata()), list(dot.get_xdata())) == ([cells[0][1]], [cells[0][2]])
    # by hand: v_flip on 3 x 3 starts at the bottom-right cell and goes up its column
    first_steps = list(zip(panels[0].lines[0].get_ydata(), panels[0].lines[0].get_xdata()))[:4]
    assert first_steps == [(2, 2), (1, 2), (0, 2), (2, 1)]


def test_speed_chart_bars_are_the_ratios_and_their_labels_the_rates(tmp_path, monkeypatch):
    """Bar lengths are the ratios to the baseline (the chart's axis: 1.0 = as fast), one bar per model and setting, the
    images per second written beside them."""
    saved = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, dpi: saved.append(fig))
    rows = [{"model": "m1", "baseline": "b1", "inf": (1.5, 30.0), "train": (0.25, 2.0)},
            {"model": "m2", "baseline": "b2", "inf": (0.75, 12.0), "train": (2.0, 8.0)}]
    figures.draw_speed_chart(str(tmp_path / "speed.png"), ["inf", "train"], rows)
    ax, = saved[0].axes
    assert [bar.get_width() for bar in ax.patches] == [1.5, 0.75, 0.25, 2.0]
    assert [text.get_text() for text in ax.texts] == ["30 img/s", "12 img/s", "2 img/s", "8 img/s"]


def test_example_search_probs_take_the_top_k_asked(tmp_path):
    """`topk` directions per layer (the README's figure uses the default 4): the top 2 are among the top 4."""
    small = dict(depth=3, embed_dim=16)
    two = figures.draw_example_search_probs(str(tmp_path / "a.png"), seed=3, topk=2, **small)
    four = figures.draw_example_search_probs(str(tmp_path / "b.png"), seed=3, topk=4, **small)
    assert [len(layer) for layer in two] == [2, 2, 2] and [len(layer) for layer in four] == [4, 4, 4]
    assert all(set(a) < set(b) for a, b in zip(two, four))
