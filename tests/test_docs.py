"""The README and the docs pages: the README stays short and links every page, every relative link and anchor
resolves, every repository path they name in backticks exists, and the README's test command is the one CI runs.
Text only: no network, no torch."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:fastebm|kernels|tests|bench|docs)/[\w./-]*)`")


def anchors(page: Path) -> set:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_readme_is_short_and_keeps_its_two_opening_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, f"README.md has {len(text.splitlines())} lines (at most 150)"
    head = text.split("\n## ")[0]
    assert "    pip install -e . && python -m fastebm.train\n" in head
    assert "    pip install -e '.[test]' && python -m pytest -q tests/\n" in head


def test_readme_links_every_docs_page():
    linked = {(README.parent / m).resolve() for m in LINK.findall(README.read_text())}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not followed here
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor})")
    assert not bad, f"{page.relative_to(ROOT)}: broken links {bad}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(page):
    missing = sorted({p for p in CODE_PATH.findall(page.read_text())
                      if "*" not in p and "<" not in p and not (ROOT / p.rstrip("/")).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest -q tests/" in README.read_text() and "python3 -m pytest -q tests/\n" in ci
