"""Where a run's time outside the rounds goes: start-up milestones, written to RUN/startup.json.

The driver marks each milestone (wall-clock seconds since the epoch) as it is reached; `phases`
turns the marks into the split `evolve-ray bench` reports and the run logs at its end:

    imports           the interpreter's first import of evolve_ray -> the driver starts (evolve_ray,
                      ray, torch; evolve_ray.IMPORTED_AT). Not from the process's creation: a shell
                      running `install && evolve-ray demo` hands its own process, created before
                      the install, to the last command. The interpreter's own start (~50 ms) is not in it.
    cluster           -> connected to (or started) the Ray cluster
    actors            -> every generator answers (buffer, scorers, engines loaded)
    trainer_group     the group is launched -> its workers ask for their first job (it overlaps
                      the start evaluation and the first collect)
    start_evaluation  -> the starting policy is evaluated (report.json's "start" row)
    first_candidate   the driver starts -> the first candidate of its first collect
    close             the rounds are done -> the trainer group and the actors are released
                      (the process's own exit, with Ray's, comes after: the bench measures it)

"imports" is there only for a process's first run (`evolve-ray reproduce` drives many runs in
one process). No ray, no vllm: the start time is passed in.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from evolve_ray.rundir import write_json

log = logging.getLogger(__name__)
STARTUP_FILE = "startup.json"
# (phase, from milestone, to milestone)
PHASES = (
    ("imports", "process", "driver"),
    ("cluster", "driver", "cluster"),
    ("actors", "cluster", "generators_ready"),
    ("trainer_group", "trainer_launched", "trainer_ready"),
    ("start_evaluation", "generators_ready", "start_evaluated"),
    ("first_candidate", "driver", "first_candidate"),
    ("close", "rounds_done", "closed"),
)


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, for the phases whose two milestones were both reached."""
    return {name: marks[b] - marks[a] for name, a, b in PHASES if a in marks and b in marks}


def phases_text(split: dict[str, float]) -> str:
    """'imports 6.8 s, cluster 5.9 s, ...' in PHASES order."""
    return ", ".join(f"{name.replace('_', ' ')} {split[name]:.1f} s" for name, _, _ in PHASES if name in split)


class Timeline:
    """Milestones of one driver process; RUN/startup.json is rewritten at every mark."""

    def __init__(self, run_dir: Path, *, process_start: float | None) -> None:
        self.path = run_dir / STARTUP_FILE
        self.marks: dict[str, float] = {} if process_start is None else {"process": process_start}

    def mark(self, name: str, at: float | None = None) -> None:
        """Record `name` at `at` (default now); a milestone keeps its first time."""
        if name in self.marks:
            return
        self.marks[name] = time.time() if at is None else at
        self.write()

    def write(self) -> None:
        doc: dict[str, Any] = {"marks": self.marks, "phases_s": phases(self.marks)}
        try:
            write_json(self.path, doc)
        except OSError as e:  # a full disk: the run's own next write reports it; this file must not hide it
            log.warning("could not write %s: %s", self.path, e)
