"""torchrun as tools/launch.sh runs it: `python tools/torchrun.py [torchrun arguments]` (engine.torchrun's main).

It starts without the models: importing classification.engine.torchrun the usual way runs classification/__init__.py,
which imports timm, torchvision and every model (some 3 s before any worker starts), none of which this process
uses (its workers are new interpreters that import what they need). A Ctrl-C while it still imports (torch: a
second or two) ends it quietly, before any worker has started.
"""
import importlib.util
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by a parent shell: Ctrl-C during
    signal.signal(signal.SIGINT, signal.SIG_DFL)                  # the imports stops quietly (torchrun then takes it)


def wrapper_main():
    """classification.engine.torchrun's main, imported with the packages above it (``classification``, ``.common``,
    ``.engine``) as bare package objects whose ``__init__.py`` does not run: the wrapper needs only the standard
    library, ``common.signals`` and, once it runs, torch. The bare packages leave ``sys.modules`` right after, so that
    anything that imports ``classification`` later in this process gets the real one, models registered."""
    bare = [name for name in ("classification", "classification.common", "classification.engine")
            if name not in sys.modules]
    for name in bare:
        folder = os.path.join(ROOT, *name.split("."))
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        from classification.engine.torchrun import main
    finally:
        for name in bare:
            del sys.modules[name]
    return main


if __name__ == "__main__":
    sys.exit(wrapper_main()())
