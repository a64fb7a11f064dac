"""Every `*.md` file that the repository's code, configs and docs name is in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Names of files a run writes into its own directory (RUN/report.md, bench.md beside bench.json,
# DIR/reproduce.md): outputs, not repository files.
WRITTEN_BY_RUNS = {"report.md", "bench.md", "reproduce.md"}
_REF = re.compile(r"(?<![\w./-])([\w./-]*\w\.md)\b")
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ""}


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    here = Path(__file__).resolve()  # this file names example files on purpose
    return [ROOT / f for f in out if Path(f).suffix in TEXT and (ROOT / f).is_file() and ROOT / f != here]


def missing_references(files: list[Path], root: Path) -> list[str]:
    """'file:line: name' for each *.md name that resolves neither from the root nor beside the file."""
    bad = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in _REF.findall(line):
                if Path(ref).name in WRITTEN_BY_RUNS or (root / ref).is_file() or (f.parent / ref).is_file():
                    continue
                bad.append(f"{f.relative_to(root)}:{n}: {ref}")
    return bad


def test_every_named_md_file_exists() -> None:
    files = repo_files()
    assert any(f.name == "README.md" for f in files) and len(files) > 50
    assert missing_references(files, ROOT) == []


def test_the_scan_can_fail(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    f = tmp_path / "mod.py"
    gone = "GONE" + ".md"
    f.write_text(f'"""See docs/here.md and RUN/report.md."""\n# background: {gone}, docs/{gone}\n')
    assert missing_references([f], tmp_path) == [f"mod.py:2: {gone}", f"mod.py:2: docs/{gone}"]
