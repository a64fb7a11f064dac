"""What `evolve-ray run --resume RUN --set ...` may change, and the record of what it changed.

A resumed run continues from files the earlier settings produced: the candidates, pairs and
checkpoints of the model, task, strategy, selection and loss it started with. Only settings that
shape how the remaining work is done (how many rounds, how many generators and scorers and their
resources, how much is evaluated, logging, how to reach the cluster) may change: the schema marks
them (`_f(..., resume=True)` in config.py; docs/options.md lists them). Any other key that differs
from the stored config is refused with one line naming it, before any actor starts.
The stored and the new resolved configs are compared key by key, so repeating a stored value is
fine. `run.out` is the directory being resumed, wherever it now is: a resume that sets it to
anything else is refused (move the directory instead).
Pure: no ray.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolve_ray.config import Config, config_items, dump_yaml, field_of, load_config, read_yaml, replace
from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write, read_json

RESUMES_FILE = "resumes.jsonl"
STAGES = ("collect", "train", "evaluate")
# Where the run lives is the directory resumed, not a setting (a moved run keeps working).
LOCATION_KEY = "run.out"


class ResumeRefused(UserError):
    """A resume asked to change a setting the run's files depend on."""


@dataclass(frozen=True)
class ResumePlan:
    """What a resume continues with: the new resolved config, the stored state, and the changes."""

    run_dir: Path
    cfg: Config
    state: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Every key whose resolved value differs, as key -> (old, new); run.out is not compared."""
    a, b = config_items(old), config_items(new)
    return {k: (a[k], b[k]) for k in a if k != LOCATION_KEY and a[k] != b[k]}


def may_change(key: str) -> bool:
    """Whether a resume may change `key` (the schema field's `resume` mark)."""
    return bool(field_of(key).metadata.get("resume"))


def mutable_keys() -> list[str]:
    """Every key a resume may change, in schema order."""
    return [k for k in config_items(Config()) if may_change(k)]


def rounds_done(state: dict[str, Any]) -> int:
    """Rounds whose last stage (evaluate) finished, from state.json's last completed stage."""
    last = state.get("last")
    if last is None:
        return 0
    return last["round"] + 1 if last["stage"] == STAGES[-1] else last["round"]


def check_changes(changes: dict[str, tuple[Any, Any]], *, done: int) -> None:
    """Raise ResumeRefused naming the first change a resume may not make."""
    for key, (old, _new) in changes.items():
        if not may_change(key):
            raise ResumeRefused(
                f"{key} cannot change on resume (it was {old!r}); start a new run "
                f"(a resume may change {', '.join(mutable_keys())})"
            )
    if "run.rounds" in changes and changes["run.rounds"][1] < done:
        raise ResumeRefused(
            f"run.rounds={changes['run.rounds'][1]} is below the {done} rounds this run already completed"
        )


def plan_resume(run_dir: Path, config: str | Path | None = None, sets: Sequence[str] = ()) -> ResumePlan:
    """The stored config with `config`'s and `sets`' overrides on top, checked against what may change.

    Raises UserError (one line) for a directory that holds no run, a bad value or a refused change:
    all before the cluster is joined.
    """
    run_dir = run_dir.resolve()
    stored_file = run_dir / "config.yaml"
    if not stored_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    stored = read_yaml(stored_file)
    old = load_config(None, base=stored)
    new = load_config(config, list(sets), base=stored)
    state = read_json(run_dir / "state.json") if (run_dir / "state.json").exists() else {"last": None}
    if new.run.out != old.run.out and Path(new.run.out).resolve() != run_dir:
        raise ResumeRefused(
            f"run.out cannot change on resume: the run lives in {run_dir} (move or copy the directory instead)"
        )
    changes = config_changes(old, new)
    check_changes(changes, done=rounds_done(state))
    if Path(new.run.out).resolve() != run_dir:  # moved or copied: the run lives where it was resumed
        new = replace(new, run={"out": str(run_dir)})
    return ResumePlan(run_dir, new, state, changes)


def changes_text(changes: dict[str, tuple[Any, Any]]) -> str:
    """`generation.num_generators 1 -> 2, run.rounds 3 -> 4` for the log."""
    return ", ".join(f"{k} {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in changes.items())


def record_resume(plan: ResumePlan, now: float | None = None) -> bool:
    """Write the new config to RUN/config.yaml if it differs, and append a record of the changes
    to RUN/resumes.jsonl (one JSON object a line: time, changes {key: [old, new]}).
    Returns whether any setting changed."""
    stored_file = plan.run_dir / "config.yaml"
    text = dump_yaml(plan.cfg)
    if stored_file.read_text(encoding="utf-8") != text:
        atomic_write(stored_file, text.encode())
    if not plan.changes:
        return False
    record = {"time": time.time() if now is None else now, "changes": {k: list(v) for k, v in plan.changes.items()}}
    log_file = plan.run_dir / RESUMES_FILE
    before = log_file.read_bytes() if log_file.exists() else b""
    atomic_write(log_file, before + (json.dumps(record) + "\n").encode())
    return True
