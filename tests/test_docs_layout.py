# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The docs are a short model card plus topic pages, and nothing the card used to hold was lost.

``tests/data/docs_before_card.txt`` lists the headings, figures and relative links of ``docs/README.md`` before it
became a model card (commit 4be960a); each must still exist somewhere under ``docs/``. Every relative link of the
docs and of the top-level README must resolve, anchors included.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CARD = DOCS / "README.md"
BEFORE = Path(__file__).resolve().parent / "data" / "docs_before_card.txt"
CARD_MAX_LINES = 400
BAD_INPUTS = "### Bad inputs"


def _pages() -> list[Path]:
    """Every Markdown page under docs/."""
    return sorted(DOCS.rglob("*.md"))


def _without_fences(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (they hold no headings or links)."""
    lines, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"\s*(```|~~~)", line)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None:
            fence = None if line.strip().startswith(fence) else fence
        else:
            lines.append(line)
            continue
        lines.append("")
    return "\n".join(lines)


def _without_code(text: str) -> str:
    """``text`` without code blocks and inline code spans (a span may wrap lines, not cross a paragraph)."""
    return re.sub(r"``.*?``|`(?:[^`\n]|\n(?!\s*\n))*`", "", _without_fences(text), flags=re.S)


def _headings(text: str) -> list[str]:
    """Heading texts (any level) outside code blocks, inline code kept, spaces collapsed."""
    found = re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", _without_fences(text), flags=re.M)
    return [" ".join(h.split()) for h in found]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, repeated ones numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _headings(page.read_text()):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: Path) -> list[tuple[bool, str]]:
    """(is_image, target) of every inline Markdown link of a page, outside code."""
    text = _without_code(page.read_text())
    return [(bang == "!", target) for bang, target in re.findall(r"(!?)\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)", text)]


def _is_relative(target: str) -> bool:
    return not re.match(r"[a-zA-Z][\w+.-]*:", target)


def _resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file a relative link points to, and its anchor ('' for none)."""
    path, _, anchor = target.partition("#")
    return (page if not path else (page.parent / path).resolve()), anchor


def _before() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {"heading": [], "image": [], "link": []}
    for line in BEFORE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, value = line.split("\t", 1)
            entries[kind].append(value.strip())
    return entries


def test_the_card_is_short():
    lines = len(CARD.read_text().splitlines())
    assert lines <= CARD_MAX_LINES, (
        f"docs/README.md has {lines} lines, more than {CARD_MAX_LINES}: it is the model card a model-zoo user reads "
        "in five minutes; move details to a topic page under docs/ and link it"
    )


def test_the_list_of_the_old_card_is_there():
    before = _before()
    assert len(before["heading"]) >= 40 and len(before["image"]) >= 12, "tests/data/docs_before_card.txt is cut"


def test_every_old_heading_still_exists():
    headings = {h for page in _pages() for h in _headings(page.read_text())}
    missing = [h for h in _before()["heading"] if " ".join(h.split()) not in headings]
    assert not missing, f"headings of the former docs/README.md found in no page under docs/: {missing}"


@pytest.mark.parametrize("kind", ["image", "link"])
def test_every_old_figure_and_link_is_still_shown(kind):
    shown = {
        _resolve(page, target)[0]
        for page in _pages()
        for is_image, target in _links(page)
        if is_image == (kind == "image") and _is_relative(target)
    }
    for value in _before()[kind]:
        path = (DOCS / value.partition("#")[0]).resolve()
        assert path.is_file(), f"{value} (a {kind} of the former docs/README.md) no longer exists under docs/"
        assert path in shown, f"no page under docs/ shows {value} any more ({kind} of the former docs/README.md)"


@pytest.mark.parametrize("page", [ROOT / "README.md", *_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for _, target in _links(page):
        if not _is_relative(target):
            continue
        path, anchor = _resolve(page, target)
        assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), (
                f"{page.relative_to(ROOT)} links {target}, but {path.relative_to(ROOT)} has no heading with the "
                f"anchor #{anchor}"
            )


def test_every_topic_page_is_linked_from_the_card():
    linked = {_resolve(CARD, target)[0] for _, target in _links(CARD) if _is_relative(target)}
    pages = [p for p in sorted(DOCS.glob("*.md")) if p != CARD]
    assert len(pages) >= 4, "the card's details live in topic pages under docs/"
    for page in pages:
        assert page.resolve() in linked, f"docs/README.md does not link {page.relative_to(ROOT)}"


def test_bad_inputs_has_one_home_with_its_table():
    homes = [p for p in _pages() if BAD_INPUTS in p.read_text().splitlines()]
    assert len(homes) == 1, f"'{BAD_INPUTS}' must head a section of exactly one page under docs/, found {homes}"
    lines = homes[0].read_text().splitlines()
    section = lines[lines.index(BAD_INPUTS) + 1 :]
    end = next((i for i, line in enumerate(section) if re.match(r"#{1,3}\s", line)), len(section))
    table = [line for line in section[:end] if line.startswith("|")]
    assert len(table) >= 3 and re.match(r"\|\s*-", table[1]), f"'{BAD_INPUTS}' in {homes[0].name} has no table"


def _headline(name: str, variant: str) -> dict[str, str]:
    with open(DOCS / "results" / name, newline="") as f:
        row = next(r for r in csv.DictReader(f) if (r["variant"], r["group"]) == (variant, "all"))
    dice = f"{float(row['dice_mean']):.3f} ± {float(row['dice_std']):.3f}"
    hd95 = f"{float(row['hd95_mean']):.2f} ± {float(row['hd95_std']):.2f}"
    return {"dice": dice, "hd95": hd95}


@pytest.mark.parametrize("doc", ["README.md", "docs/README.md"])
def test_headline_numbers_are_on_unseen_patients(doc):
    """The READMEs quote the shipped models' test-patient results as docs/results holds them."""
    text = (ROOT / doc).read_text()
    for name, variant in [("cpu_models_test_summary.csv", "new_cpu"), ("paper_models_test_summary.csv", "new_paper")]:
        for metric, value in _headline(name, variant).items():
            assert value in text, f"{doc} does not quote {metric} {value} of {variant} (docs/results/{name})"
