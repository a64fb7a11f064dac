"""Generated blocks in hand-written markdown pages.

A command that measures something (`evolve-ray reproduce --docs-page PAGE`, `evolve-ray bench
--docs-page PAGE`) writes its tables between two marker lines of a docs page,

    <!-- generated: NAME -->
    ...
    <!-- /generated: NAME -->

and leaves every other line of the page as it was. A page or block that is not there is refused
in one line (`check_page` runs before the command's long work, `refresh_page` after it). Pure: no
ray, no vllm.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write

_HEADING = re.compile(r"^(#{1,6})(?=\s)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_IMAGE_LINE = re.compile(r"^\s*!\[[^\]]*\]\(([^)\s]+)[^)]*\)\s*$")


def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker lines of block `name`."""
    return f"<!-- generated: {name} -->", f"<!-- /generated: {name} -->"


def _span(text: str, name: str, where: str) -> tuple[int, int]:
    """(end of the opening marker, start of the closing marker) of block `name` in `text`."""
    start, end = markers(name)
    opens = [m.end() for m in re.finditer(rf"^{re.escape(start)}[ \t]*$", text, re.M)]
    closes = [m.start() for m in re.finditer(rf"^{re.escape(end)}[ \t]*$", text, re.M)]
    if not opens or not closes:
        raise UserError(f"{where} has no generated block {name!r}: add the lines {start} and {end} where it goes")
    if len(opens) > 1 or len(closes) > 1:
        raise UserError(f"{where} has more than one generated block {name!r} ({start} ... {end}): keep one")
    if closes[0] < opens[0]:
        raise UserError(f"{where}: {end} comes before {start}; put the opening marker first")
    return opens[0], closes[0]


def block(text: str, name: str, *, where: str = "the page") -> str:
    """The markdown inside block `name` (without its markers and surrounding blank lines)."""
    a, b = _span(text, name, where)
    return text[a:b].strip("\n")


def replace_block(text: str, name: str, body: str, *, where: str = "the page") -> str:
    """`text` with block `name`'s contents replaced by `body`; everything outside it unchanged.
    Idempotent: the same body again gives the same text."""
    if "<!-- generated:" in body or "<!-- /generated:" in body:
        raise UserError(f"the new contents of {where}'s block {name!r} contain a block marker themselves")
    a, b = _span(text, name, where)
    return text[:a] + "\n\n" + body.strip("\n") + "\n\n" + text[b:]


def check_page(page: Path, name: str) -> None:
    """Refuse, in one line, a page that does not exist or lacks block `name` (before the work)."""
    _span(_read(page), name, str(page))


def refresh_page(page: Path, name: str, body: str) -> None:
    """Replace block `name` of the markdown file `page` by `body`, in place (atomically, the
    file's permissions kept)."""
    text = _read(page)
    new = replace_block(text, name, body, where=str(page))
    if new == text:
        return
    mode = page.stat().st_mode & 0o777
    atomic_write(page, new.encode("utf-8"))
    os.chmod(page, mode)


def _read(page: Path) -> str:
    if not page.is_file():
        raise UserError(f"docs page {page} does not exist (it must hold the generated block to refresh)")
    try:
        return page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read docs page {page}: {e}") from e


def embed(markdown: str, *, level: int) -> str:
    """A generated markdown file made fit to sit inside a page: its headings shifted so the top
    one is at `level` (fenced code left alone), and lines that only show an image by a relative
    path dropped (the image lies beside the generated file, not beside the page)."""
    lines = markdown.strip("\n").splitlines()
    fenced, top = False, 7
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            top = min(top, len(m.group(1)))
    shift = max(0, level - top) if top <= 6 else 0
    out, fenced = [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            image = _IMAGE_LINE.match(line)
            if image and "://" not in image.group(1) and not image.group(1).startswith("/"):
                continue
            if m := _HEADING.match(line):
                line = "#" * min(6, len(m.group(1)) + shift) + line[m.end() :]
        out.append(line)
    return "\n".join(out).strip("\n")


def ran_line(command: str, *, started: str, seconds: float, machine: str = "", notes: tuple[str, ...] = ()) -> str:
    """The block's first line: the exact command that wrote it, when it ran, for how long, where."""
    where = f" on {machine}" if machine else ""
    return (
        "*"
        + " ".join([f"Written by `{command}`, which ran at {started} for {duration(seconds)}{where}.", *notes])
        + "*"
    )


def duration(seconds: float) -> str:
    """'47 min 24 s', '507 s'."""
    s = round(seconds)
    return f"{s // 60} min {s % 60} s" if s >= 600 else f"{s} s"


def machine_text() -> str:
    """'N CPUs (the CPU's model name), X GiB RAM', from /proc where it exists."""
    cpuinfo = Path("/proc/cpuinfo")
    meminfo = Path("/proc/meminfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    mem = meminfo.read_text().splitlines()[0].split() if meminfo.exists() else []
    out = f"{os.cpu_count()} CPUs" + (f" ({model})" if model else "")
    return out + (f", {int(mem[1]) / (1 << 20):.1f} GiB RAM" if len(mem) > 1 else "")
