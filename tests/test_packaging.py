"""What the three setup.py files promise a user who installs on an older Python or with only one kernel package."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_FILES = [ROOT / "setup.py", ROOT / "mamba-1p1p1" / "setup.py", ROOT / "causal-conv1d" / "setup.py"]


def setup_keywords(path: Path) -> dict:
    """The keyword arguments of the ``setup(...)`` call in ``path`` that are literals."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            keywords = {}
            for keyword in node.keywords:
                try:
                    keywords[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    continue
            return keywords
    raise AssertionError(f"no setup(...) call in {path}")


def test_editable_install_uses_pep660_setuptools():
    """setuptools < 64 (a fresh Python 3.9 venv has 58) installs ``-e .`` by ``setup.py develop``, which ignores
    ``package_dir``: ``import localmamba_ssm`` then failed (measured on Python 3.9.18, pip 23.0.1). The build
    system asks for a setuptools with PEP 660 editable installs instead."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^build-backend = "setuptools\.build_meta"$', text, re.M)
    requires = re.search(r"^requires = \[(.*)\]$", text, re.M)
    assert requires is not None
    floor = re.fullmatch(r'"setuptools>=(\d+)[^"]*"', requires.group(1).strip())
    assert floor is not None and int(floor.group(1)) >= 64, requires.group(1)


@pytest.mark.parametrize("key", ["python_requires", "triton"])
def test_kernel_packages_ask_what_the_root_asks(key):
    """Installing ``mamba-1p1p1/`` or ``causal-conv1d/`` alone asks for the same Python and triton as the whole
    project (the kernel folders said ``triton>=2.1`` after the root moved to the checked 3.0)."""
    def wanted(path: Path) -> str:
        keywords = setup_keywords(path)
        return keywords[key] if key == "python_requires" else keywords["extras_require"][key]
    assert {str(wanted(path)) for path in SETUP_FILES} == {str(wanted(SETUP_FILES[0]))}


def test_the_timm_floor_is_a_release_the_library_imports_with():
    """``classification.models`` imports ``timm.layers.calculate_drop_path_rates``, which timm has from 1.0.21 on:
    with setup.py's old floor, ``timm>=1.0.9``, pip kept an installed timm 1.0.9 to 1.0.20 and ``import
    classification`` raised ImportError (measured with timm 1.0.9 and 1.0.20; 1.0.21 passes tests/models' timm
    convention, option, pretrained and model-API tests)."""
    floor = next(re.fullmatch(r"timm>=([\d.]+)", requirement) for requirement in
                 setup_keywords(SETUP_FILES[0])["install_requires"] if requirement.startswith("timm"))
    assert floor is not None and tuple(map(int, floor.group(1).split("."))) >= (1, 0, 21), floor
