"""The documentation set hangs together: the README links every guide, and
every relative link in README.md and docs/*.md points at a file that exists
and, with an anchor, at one of its headings (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
GUIDES = ("user-guide.md", "api.md", "billing-faq.md", "migration.md", "troubleshooting.md",
          "deploy.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces → ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_readme_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Documentation"):]
    for guide in GUIDES:
        assert f"(docs/{guide})" in section, guide


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target} → no such file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: {target} → no such heading"
