"""Imports run one way: the kernel runtime imports no op package, the conv1d op not the scan ops, the kernel packages
nothing of the library; no tool imports another tool (what tools share is library code)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = {"classification", "detection", "segmentation", "tools"}
PACKAGES = {
    "localmamba_kernel_runtime": REPO / "causal-conv1d" / "localmamba_kernel_runtime",
    "localmamba_conv1d": REPO / "causal-conv1d" / "localmamba_conv1d",
    "localmamba_ssm": REPO / "mamba-1p1p1" / "localmamba_ssm",
}
FORBIDDEN = {
    "localmamba_kernel_runtime": LIBRARY | {"localmamba_conv1d", "localmamba_ssm"},
    "localmamba_conv1d": LIBRARY | {"localmamba_ssm"},
    "localmamba_ssm": LIBRARY,
}


def imported_modules(path: Path) -> set:
    """Absolute module names a file imports, anywhere in it (relative imports stay inside its package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", list(PACKAGES))
def test_kernel_packages_import_downwards_only(package):
    offenders = {f"{path.relative_to(REPO)}: {name}" for path in PACKAGES[package].rglob("*.py")
                 for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN[package]}
    assert not offenders


def test_no_tool_imports_another_tool():
    tools = {path.stem for path in (REPO / "tools").glob("*.py")}
    offenders = {f"{path.name}: {name}" for path in (REPO / "tools").glob("*.py")
                 for name in imported_modules(path) if name.split(".")[0] in tools | {"tools"}}
    assert not offenders
