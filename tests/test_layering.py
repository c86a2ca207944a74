"""Imports run one way (README, Layout): the kernel runtime below the op packages, the kernels below the library,
`classification` below the tools and the mm plugins, `segmentation` beside (not on top of) `detection`, and inside
`classification` `common` below everything, `data` and `search` below `engine`; no tool imports another tool."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGINS_AND_TOOLS = {"detection", "segmentation", "tools"}
LIBRARY = {"classification"} | PLUGINS_AND_TOOLS
PACKAGE_DIRS = {
    "localmamba_kernel_runtime": REPO / "causal-conv1d" / "localmamba_kernel_runtime",
    "localmamba_conv1d": REPO / "causal-conv1d" / "localmamba_conv1d",
    "localmamba_ssm": REPO / "mamba-1p1p1" / "localmamba_ssm",
    "classification": REPO / "classification",
    "segmentation": REPO / "segmentation",
    "detection": REPO / "detection",
}


def imported_modules(path: Path, package: str = "") -> set[str]:
    """Absolute names of the modules a file imports, anywhere in it; relative imports are resolved against the file's
    place in `package` (whose folder is PACKAGE_DIRS[package]; none for a script)."""
    parts = [package, *path.relative_to(PACKAGE_DIRS[package]).parent.parts] if package else []
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module)
                continue
            base = ".".join(parts[: len(parts) - node.level + 1])
            if node.module:
                names.add(f"{base}.{node.module}")
            else:
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offenders(package: str, forbidden: set[str], subpackage: str = "") -> set[str]:
    """`file: module` for every import of a forbidden name (a top-level package, or `package.sub`) in `package`
    (or only in its `subpackage`: a folder or one module)."""
    folder = PACKAGE_DIRS[package] / subpackage
    found = set()
    for path in ([folder] if folder.is_file() else folder.rglob("*.py")):
        for name in imported_modules(path, package):
            pieces = name.split(".")
            if pieces[0] in forbidden or ".".join(pieces[:2]) in forbidden:
                found.add(f"{path.relative_to(REPO)}: {name}")
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("localmamba_kernel_runtime", LIBRARY | {"localmamba_conv1d", "localmamba_ssm"}),
    ("localmamba_conv1d", LIBRARY | {"localmamba_ssm"}),
    ("localmamba_ssm", LIBRARY),
    ("classification", PLUGINS_AND_TOOLS),
    ("segmentation", {"detection", "tools"}),
    ("detection", {"segmentation", "tools"}),
])
def test_packages_import_downwards_only(package, forbidden):
    assert offenders(package, forbidden) == set(), f"{package} must not import {sorted(forbidden)} (README, Layout)"


ENGINE, DATA, SEARCH, MODELS, DENSE, BENCHMARKS, FIGURES = (f"classification.{name}" for name in (
    "engine", "data", "search", "models", "dense", "benchmarks", "figures"))
# Each part of `classification` (a subpackage, or a module beside them) and what it must not import.
CLASSIFICATION_RULES = {
    "common": {MODELS, DATA, SEARCH, ENGINE, DENSE, BENCHMARKS, FIGURES},
    "data": {ENGINE, SEARCH, DENSE, BENCHMARKS, FIGURES},
    "search": {ENGINE, DENSE, BENCHMARKS, FIGURES},
    "models": {ENGINE, DATA, SEARCH, DENSE, BENCHMARKS, FIGURES},
    "dense": {ENGINE, DATA, SEARCH, BENCHMARKS, FIGURES},    # the det/seg backbones stand on the models' public API
    "engine": {DENSE, BENCHMARKS, FIGURES},                 # nothing in the library imports the benchmarks
    "benchmarks": {DENSE, FIGURES},
    "figures.py": {ENGINE, DATA, DENSE, BENCHMARKS},        # the README's figures, drawn by tools/draw_assets.py
    "__init__.py": {ENGINE, DATA, SEARCH, DENSE, BENCHMARKS, FIGURES},   # `import classification` registers models
}


@pytest.mark.parametrize("part, forbidden", sorted(CLASSIFICATION_RULES.items()))
def test_inside_classification_imports_run_one_way(part, forbidden):
    found = offenders("classification", forbidden, part)
    assert found == set(), f"classification/{part} must not import {sorted(forbidden)} (README, Layout)"


def test_every_part_of_classification_has_its_rule():
    """A new subpackage or module of `classification` gets its place in README's Layout and its rule above, so that
    no code escapes the layering by living in a folder nobody listed."""
    folder = PACKAGE_DIRS["classification"]
    parts = {path.name for path in folder.iterdir()
             if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists())}
    assert parts - set(CLASSIFICATION_RULES) == set(), "add them to README's Layout and to CLASSIFICATION_RULES"


def test_the_checker_sees_relative_imports():
    path = PACKAGE_DIRS["classification"] / "data" / "loader.py"
    assert any(name.startswith("classification.common") for name in imported_modules(path, "classification"))


def test_no_tool_imports_another_tool():
    tools = {path.stem for path in (REPO / "tools").glob("*.py")}
    found = {f"{path.name}: {name}" for path in (REPO / "tools").glob("*.py")
             for name in imported_modules(path) if name.split(".")[0] in tools | {"tools"}}
    assert found == set()


def test_only_the_tools_import_the_benchmarks():
    """`classification.benchmarks` sits on top of the library: no other part of it, and no mm plugin, imports it."""
    library = [path for path in PACKAGE_DIRS["classification"].rglob("*.py") if "benchmarks" not in path.parts]
    plugins = [*(REPO / "detection").rglob("*.py"), *(REPO / "segmentation").rglob("*.py")]
    imports = [(path, name) for path in library for name in imported_modules(path, "classification")]
    imports += [(path, name) for path in plugins for name in imported_modules(path)]
    found = {f"{path.relative_to(REPO)}: {name}" for path, name in imports if name.startswith(BENCHMARKS)}
    assert found == set()
