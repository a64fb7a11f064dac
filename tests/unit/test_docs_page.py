"""Generated blocks in docs pages (evolve_ray/reporting/docs_page.py): the block is replaced, the
hand-written text around it is not, a page or block that is not there is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolve_ray.errors import UserError
from evolve_ray.reporting.docs_page import (
    block,
    check_page,
    duration,
    embed,
    ran_line,
    refresh_page,
    replace_block,
)

ROOT = Path(__file__).resolve().parents[2]

PAGE = """# Results

Hand-written text before, kept as it is.

<!-- generated: reproduce -->

| old | table |
|---|---|
| 1 | 2 |

<!-- /generated: reproduce -->

Hand-written text after: what did not work.
<!-- generated: other -->
other block
<!-- /generated: other -->
The end, without a trailing newline"""


def _around(text: str, name: str) -> tuple[str, str]:
    start, end = f"<!-- generated: {name} -->", f"<!-- /generated: {name} -->"
    return text[: text.index(start) + len(start)], text[text.index(end) :]


def test_the_block_is_replaced_and_the_text_around_it_is_not() -> None:
    new = replace_block(PAGE, "reproduce", "| new | table |\n|---|---|\n| 3 | 4 |\n")
    assert _around(new, "reproduce") == _around(PAGE, "reproduce")  # every byte outside the block
    assert block(new, "reproduce") == "| new | table |\n|---|---|\n| 3 | 4 |"
    assert "| 1 | 2 |" not in new and "| 3 | 4 |" in new
    assert block(new, "other") == "other block"  # another block is left alone
    assert new.endswith("The end, without a trailing newline")
    # Blank lines keep the markers (HTML comments) apart from the markdown inside.
    assert "<!-- generated: reproduce -->\n\n| new |" in new and "| 3 | 4 |\n\n<!-- /generated: reproduce -->" in new


def test_replacing_is_idempotent() -> None:
    once = replace_block(PAGE, "reproduce", "body\n\nmore")
    assert replace_block(once, "reproduce", "body\n\nmore") == once
    assert replace_block(once, "reproduce", "\n\nbody\n\nmore\n\n\n") == once  # outer blank lines do not pile up
    assert replace_block(once, "reproduce", "| old | table |\n|---|---|\n| 1 | 2 |") == PAGE  # and back


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("# A page\n\nno block at all\n", "has no generated block 'reproduce': add the lines"),
        ("<!-- generated: reproduce -->\nno end\n", "has no generated block 'reproduce'"),
        ("no start\n<!-- /generated: reproduce -->\n", "has no generated block 'reproduce'"),
        ("x <!-- generated: reproduce --> inline\n<!-- /generated: reproduce -->\n", "has no generated block"),
        ("<!-- /generated: reproduce -->\n<!-- generated: reproduce -->\n", "comes before"),
        (PAGE + "\n<!-- generated: reproduce -->\n<!-- /generated: reproduce -->\n", "more than one"),
    ],
)
def test_missing_or_broken_markers_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(UserError, match=says) as e:
        replace_block(text, "reproduce", "body", where="docs/results.md")
    assert "\n" not in str(e.value) and str(e.value).startswith("docs/results.md")


def test_a_body_holding_markers_is_refused() -> None:
    with pytest.raises(UserError, match="contain a block marker"):
        replace_block(PAGE, "reproduce", "<!-- /generated: reproduce -->")


def test_the_file_is_refreshed_in_place_and_a_missing_page_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "docs/results.md"  # docs/: test_references.py resolves the names it finds from the root
    page.parent.mkdir()
    page.write_text(PAGE, encoding="utf-8")
    page.chmod(0o644)
    check_page(page, "reproduce")
    refresh_page(page, "reproduce", "fresh")
    assert block(page.read_text(encoding="utf-8"), "reproduce") == "fresh"
    assert page.stat().st_mode & 0o777 == 0o644  # the atomic write keeps the page's permissions
    assert list(page.parent.iterdir()) == [page]  # no temporary file left
    with pytest.raises(UserError, match="has no generated block 'bench'"):
        check_page(page, "bench")
    gone = tmp_path / "gone-page"
    with pytest.raises(UserError, match=r"docs page .*gone-page does not exist") as e:
        refresh_page(gone, "reproduce", "fresh")
    assert "\n" not in str(e.value)
    assert not gone.exists()


def test_embed_shifts_headings_and_drops_relative_images() -> None:
    md = "# Title\n\ntext\n\n## Part\n\n```\n# not a heading\n```\n\n![plot](reproduce.png)\n![web](https://x.org/a.png)\n"
    assert embed(md, level=3) == (
        "### Title\n\ntext\n\n#### Part\n\n```\n# not a heading\n```\n\n![web](https://x.org/a.png)"
    )
    assert embed("## Already deep\n", level=1) == "## Already deep"  # never promoted
    assert embed("no headings", level=3) == "no headings"


def test_the_line_names_the_command_when_and_for_how_long() -> None:
    line = ran_line("evolve-ray bench --out b.json", started="2025-01-02 03:04", seconds=507.4, machine="2 CPUs")
    assert line == "*Written by `evolve-ray bench --out b.json`, which ran at 2025-01-02 03:04 for 507 s on 2 CPUs.*"
    assert duration(2844) == "47 min 24 s" and duration(59.6) == "60 s"
    assert "\n" not in ran_line("c", started="s", seconds=1, notes=("One note.", "Two."))


@pytest.mark.parametrize(("page", "name"), [("docs/results.md", "reproduce"), ("docs/benchmarks.md", "bench")])
def test_the_docs_pages_hold_the_blocks_their_commands_refresh(page: str, name: str) -> None:
    check_page(ROOT / page, name)
    assert "| " in block((ROOT / page).read_text(encoding="utf-8"), name)  # the tables are there
