"""demo: `evolve-ray demo` as a user runs it (a subprocess into a temporary directory): wall time,
the share of it spent in each stage (the report's time/ keys), and the time outside the rounds
split into its phases (RUN/startup.json, evolve_ray.driver.timeline): imports, cluster, actors ready,
the start evaluation, and shutdown to the process's exit; the trainer group's start and the first
candidate are shown beside them (the group starts in the background)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import ray

from evolve_ray.bench.context import BenchContext
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.driver.timeline import STARTUP_FILE

LIMIT_S = 300.0
OUTSIDE_GOAL_S = 15.0
STAGES = ("collect", "train", "evaluate")
# Phases of the time outside the rounds, in order (their sum with the rest is the outside time).
SERIAL = ("imports", "cluster", "actors", "start_evaluation")


def run(ctx: BenchContext) -> BenchResult:
    out = ctx.workdir / "demo"
    cmd = [sys.executable, "-m", "evolve_ray.cli", "demo", "--out", str(out)]
    env = dict(os.environ)
    if ray.is_initialized():  # joined to a cluster: the demo joins it too instead of starting a second one
        cmd += ["--set", "cluster.address=auto"]
    else:  # its own local cluster, as on a user's machine, even where `ray start` left one running here
        env["RAY_ADDRESS"] = "local"
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"demo exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    ended = time.time()
    rows = [r for r in json.loads((out / "report.json").read_text())["rounds"] if r["round"] >= 0]
    stage_s = {s: sum(r[f"time/{s}_s"] for r in rows) for s in STAGES}
    outside = seconds - sum(r["time/round_s"] for r in rows)
    share = [Figure(f"share: {s}", 100 * v / seconds, "%") for s, v in stage_s.items()]
    split = outside_split(json.loads((out / STARTUP_FILE).read_text()), ended)
    return BenchResult(
        "demo",
        figures=[
            Figure("evolve-ray demo wall time", seconds, "s", goal=Goal("value", "<=", LIMIT_S)),
            *share,
            Figure("share: outside rounds (start-up, shutdown)", 100 * outside / seconds, "%"),
            Figure("outside rounds", outside, "s", goal=Goal("value", "<=", OUTSIDE_GOAL_S)),
            *[Figure(f"outside rounds: {name.replace('_', ' ')}", v, "s") for name, v in split.items()],
        ],
        settings={
            "command": " ".join(["evolve-ray", *cmd[3:5], "TMP", *cmd[6:]]),
            "rounds": len(rows),
            **{f"{s}_s": round(v, 2) for s, v in stage_s.items()},
            "outside_rounds_s": round(outside, 2),
        },
        memory_mb={"demo driver process": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
    )


def outside_split(startup: dict, ended: float) -> dict[str, float]:
    """The outside-rounds phases of a finished run's startup.json, in seconds: the serial ones, then
    shutdown to the process's exit (`ended`), then the trainer group's start and the first
    candidate (measured from the driver's start), which overlap the others."""
    phases, marks = startup["phases_s"], startup["marks"]
    split = {name: phases[name] for name in SERIAL if name in phases}
    if "rounds_done" in marks:
        split["shutdown to exit"] = ended - marks["rounds_done"]
    split |= {f"{name} (overlapped)": phases[name] for name in ("trainer_group", "first_candidate") if name in phases}
    return split
