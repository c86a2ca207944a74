"""Imports inside `classification` run one way: `common` below everything, `data` and `search` below `engine`."""
import ast
import os

import pytest

from training_helpers import REPO

PACKAGE = os.path.join(REPO, "classification")


def imported_subpackages(path: str, package: str) -> set[str]:
    """The `classification.<sub>` packages a module imports, absolute or relative (`package`: its own subpackage)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [f"classification.{package}"]
            elif node.level == 2:
                names = [f"classification.{node.module}" if node.module else
                         f"classification.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("classification.")}
    return found - {package}


@pytest.mark.parametrize("package, forbidden", [
    ("common", {"models", "data", "search", "engine"}),
    ("data", {"engine", "search"}),
    ("search", {"engine"}),
])
def test_imports_run_one_way(package, forbidden):
    folder = os.path.join(PACKAGE, package)
    modules = [f for f in sorted(os.listdir(folder)) if f.endswith(".py")]
    assert modules
    wrong = {m: sorted(imported_subpackages(os.path.join(folder, m), package) & forbidden) for m in modules}
    assert {m: w for m, w in wrong.items() if w} == {}
