"""The README's actor walkthrough runs as written, in a fresh interpreter (its own local cluster)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_actor_walkthrough_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- actor-walkthrough -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README lost its walkthrough block"
    r = subprocess.run(
        [sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'buffer/decided': 4.0" in r.stdout  # every prompt's chain complete, scored and decided
    assert (tmp_path / "runs" / "walkthrough" / "rounds" / "r000" / "journal" / "candidates").is_dir()
