"""The actor walkthrough (docs/architecture.md, "The actors, by hand", linked from the README) runs
as written, in a fresh interpreter (its own local cluster)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/architecture.md"


def test_actor_walkthrough_runs(tmp_path: Path) -> None:
    block = re.search(r"<!-- actor-walkthrough -->\n```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert block, "docs/architecture.md lost its walkthrough block"
    assert "docs/architecture.md" in (ROOT / "README.md").read_text(encoding="utf-8")  # the README points there
    r = subprocess.run(
        [sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'buffer/decided': 4.0" in r.stdout  # every prompt's chain complete, scored and decided
    assert (tmp_path / "runs" / "walkthrough" / "rounds" / "r000" / "journal" / "candidates").is_dir()
