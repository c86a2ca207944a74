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


# The README and the reference pages it links, one per section.
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))


def page_text(page: str) -> str:
    """A page's Markdown without its code blocks (a '# ' there is a comment, a '](' part of code)."""
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def page_anchors(page: str) -> set:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", page_text(page), flags=re.M)}


def test_the_readme_links_every_reference_page():
    """Each page under docs/ is reachable from the README (the section it details links it)."""
    assert len(PAGES) >= 8
    linked = set(re.findall(r"\]\((docs/[^)#/]+\.md)", page_text("README.md")))
    assert linked == {page.replace(os.sep, "/") for page in PAGES[1:]}


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_to_a_file_and_heading_that_exist(page):
    """The contents line and the cross-references (`[Speed](#speed)`, `[search](docs/search.md)`,
    `(../README.md#models)`, images) lead to a file that exists and, with an anchor, to a heading of that file."""
    assert github_anchor("Training and evaluation (ImageNet)") == "training-and-evaluation-imagenet"
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page_text(page)):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, linked)):
            broken.append(target)
        elif anchor and anchor not in page_anchors(linked):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("readme", PAGES + [os.path.join("docs", "measurements", "README.md")])
def test_readme_prose_stays_within_120_columns(readme):
    """The READMEs' text wraps at the code's 120 columns, so that a diff of it reads line by line; code blocks and
    tables keep their own lines."""
    long_lines = [line[:60] for line in page_text(readme).splitlines() if len(line) > 120 and not line.startswith("|")]
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
