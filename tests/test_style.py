"""The code style every contributor's editor can check: flake8 with the settings in the repository's `.flake8`."""
import fnmatch
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flake8_finds_nothing():
    """pycodestyle's layout rules and pyflakes' unused or undefined names, 120 columns (`.flake8`)."""
    pytest.importorskip("flake8", reason="flake8 is a test dependency: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "flake8", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_within_the_page_name_its_headings():
    """The contents line and the cross-references (`[Speed](#speed)`) lead to a heading that exists."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)     # a '# ' in a code block is a comment
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert github_anchor("Training and evaluation (ImageNet)") == "training-and-evaluation-imagenet"
    assert len(links) >= 9 and links <= anchors, sorted(links - anchors)


@pytest.mark.parametrize("readme", ["README.md", os.path.join("docs", "measurements", "README.md")])
def test_readme_prose_stays_within_120_columns(readme):
    """The READMEs' text wraps at the code's 120 columns, so that a diff of it reads line by line; code blocks and
    tables keep their own lines."""
    text = open(os.path.join(ROOT, readme), encoding="utf-8").read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    long_lines = [line[:60] for line in text.splitlines() if len(line) > 120 and not line.startswith("|")]
    assert long_lines == [], long_lines


def test_measurements_index_names_every_file_and_no_missing_one():
    """docs/measurements/README.md's table lists each log and note of the folder (a `*` pattern may name several), and
    every name it lists (but the `<gpu>_e2e.log` of the next GPU run) is a file there."""
    folder = os.path.join(ROOT, "docs", "measurements")
    index = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    listed = [name for row in re.findall(r"^\| (`[^|]+)\|", index, flags=re.M)
              for name in re.findall(r"`([^`]+)`", row) if "<" not in name]
    files = sorted(f for f in os.listdir(folder) if f != "README.md")
    assert [f for f in files if not any(fnmatch.fnmatch(f, name) for name in listed)] == []
    assert [name for name in listed if not fnmatch.filter(files, name)] == []
