"""README.md and docs/*.md: every relative link resolves; the README stays short and starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 320
#: The first code block of the README, exactly: what a newcomer types.
COMMANDS = (
    "pip install -e '.[demo]' && geosteer demo          # install, then run the demo on the built-in GeoShapes benchmark",
    "pip install -e '.[dev]' && pytest                  # install, then run the tests (CPU only, offline)",
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target may be <bracketed> and may carry a "title".
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


def links(text: str) -> list[str]:
    """Targets of the markdown links and images in `text`, outside code blocks and inline code."""
    text = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return [m.group(1).strip("<>") for m in _LINK.finditer(text)]


def relative_targets(text: str) -> list[str]:
    """The link targets that name a file in the repository: no scheme, no bare #anchor; fragments dropped."""
    out = []
    for target in links(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto, ...; an anchor in the same page
        out.append(target.split("#", 1)[0].split("?", 1)[0])
    return out


def test_link_extraction_skips_code_and_external_links():
    text = (
        "see [a](docs/a.md#x) and ![plot](../p.png \"title\") and [web](https://example.com) [top](#top)\n"
        "`[not](a-link.md)`\n```\n[also not](b.md)\n```\n[bracketed](<c d.md>)\n"
    )
    assert relative_targets(text) == ["docs/a.md", "../p.png", "c d.md"]


def test_pages_exist():
    assert (REPO / "docs" / "DESIGN.md") in PAGES and len(PAGES) > 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    missing = [t for t in relative_targets(page.read_text()) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES}, move detail to docs/"


def test_readme_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    body = [line for line in lines if line.strip()]
    assert body[0].startswith("# "), "the README starts with its title"
    assert body[1].startswith("```"), "then, first of all, the code block of the two commands"
    assert tuple(body[2:4]) == COMMANDS, f"the first two commands must be exactly {COMMANDS}"
    assert body[4] == "```"
