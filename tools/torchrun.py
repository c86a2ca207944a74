"""torchrun as tools/launch.sh runs it: `python tools/torchrun.py [torchrun arguments]` (engine.torchrun's main).

A Ctrl-C while it still imports (torch, the models: seconds) ends it quietly, before any worker has started.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (torchrun then takes it)

from classification.engine.torchrun import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
