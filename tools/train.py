"""Train a classification model: `python tools/train.py [-c CONFIG] --model NAME [flags]` (see --help)."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (run_cli restores it)

from classification.engine.cli import run_cli  # noqa: E402


def main() -> None:
    from classification.engine.config import parse_args
    from classification.engine.trainer import train

    train(parse_args(description="LocalMamba training"))


if __name__ == "__main__":
    run_cli(main)
