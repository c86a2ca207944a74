"""Plot a run's curves: `python tools/plot_log.py experiments/NAME/metrics.csv [--out curves.png]`.

Draws train/test loss, top-1 (and top-5) from metrics.csv and the learning rate from lr.csv beside it; the run's
folder (experiments/NAME) stands for its metrics.csv.
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def main() -> None:
    from classification.engine.plotting import plot_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="metrics.csv of a run, or the run's folder")
    parser.add_argument("--out", default=None,
                        help="figure to write, in the format of its extension (.png added to a name without one; "
                             "a folder, or a name ending in /, gets curves.png; missing folders are created; default: "
                             "curves.png beside metrics.csv)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    args = parser.parse_args()
    print(f"wrote {plot_run(args.metrics, args.out)}")


if __name__ == "__main__":
    run_cli(main)
