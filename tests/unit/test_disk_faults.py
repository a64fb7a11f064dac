"""An unwritable or full run directory: one clear line from the CLI, and every file already written
stays whole (temporary name, then rename).

The faults are real: a run directory below a regular file cannot be created (ENOTDIR, root
included), and RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), the way a full
disk refuses them (ENOSPC), without needing a small filesystem.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

from .cli_helpers import assert_one_line_error, run_cli


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def test_cli_run_directory_that_cannot_be_created(tmp_path: Path, tiny_models) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    r = run_cli("run", "--out", str(blocker / "run"), "--set", f"model.policy={tiny_models['policy']}")
    line = assert_one_line_error(r, "cannot create run directory")
    assert "Not a directory" in line
    assert blocker.read_text() == "not a directory\n"


def test_cli_disk_full_at_the_first_write(tmp_path: Path, tiny_models) -> None:
    """The resolved config (~2 KB) does not fit: refused in one line, and no half-written config.yaml."""
    run = tmp_path / "run"
    r = run_cli(
        "run",
        "--out",
        str(run),
        "--set",
        f"model.policy={tiny_models['policy']}",
        "--set",
        f"model.reward={tiny_models['reward']}",
        preexec_fn=_limit_file_size(1024),
    )
    assert_one_line_error(r, f"cannot write {run / 'config.yaml'}: File too large")
    assert not (run / "config.yaml").exists()
    assert list(run.iterdir()) == []  # no temporary file left behind either


WRITER = """
import json, secrets, sys
from pathlib import Path
from evolve_ray.core.buffer import BufferState, RoundJournal
from evolve_ray.rundir import RunDirError, write_json
from evolve_ray.types import Candidate, Prompt

root = Path(sys.argv[1])
out = {}
write_json(root / "state.json", {"last": {"round": 0, "stage": "collect"}})
try:
    write_json(root / "state.json", {"last": {"round": 0, "stage": "train"}, "pad": "x" * 8192})
except RunDirError as e:
    out["state_error"] = str(e)

def cand(pid, text):
    return Candidate(pid, 0, 0, text, None, 0, 0, "chain")

state = BufferState(0, RoundJournal(root / "journal"), selector=None)
state.add_prompts([Prompt("p0", "1+1="), Prompt("p1", "2+2=")])
state.add_candidates([cand("p0", "2")], [])
try:
    state.add_candidates([cand("p1", secrets.token_hex(8000))], [])  # incompressible
except RunDirError as e:
    out["journal_error"] = str(e)
state.add_candidates([cand("p1", "4")], [])  # space again: the same part number, no gap
out["parts"] = sorted(p.name for p in (root / "journal" / "candidates").iterdir())
print(json.dumps(out))
"""


def test_full_disk_leaves_written_files_whole(tmp_path: Path) -> None:
    """state.json keeps its last good content; the journal keeps every complete part and continues
    where the failed write would have gone; a replay sees exactly the written candidates."""
    from evolve_ray.core.buffer import BufferState, RoundJournal

    r = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(4096),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert "state.json: File too large" in out["state_error"]
    assert json.loads((tmp_path / "state.json").read_text()) == {"last": {"round": 0, "stage": "collect"}}
    assert "File too large" in out["journal_error"]
    assert out["parts"] == ["part-000000.parquet", "part-000001.parquet"]
    assert _leftovers(tmp_path) == []
    replayed = BufferState(0, RoundJournal(tmp_path / "journal"), selector=None)
    assert {c: x.text for c, x in replayed.candidates.items()} == {"p0/c0/t0": "2", "p1/c0/t0": "4"}
