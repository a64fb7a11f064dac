"""demo: `evolve-ray demo` as a user runs it (a subprocess into a temporary directory): wall time,
and the share of it spent in each stage (the report's time/ keys) and outside the rounds
(start-up: models, cluster, actors, trainer group; shutdown)."""

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

LIMIT_S = 300.0
STAGES = ("collect", "train", "evaluate")


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
    rows = json.loads((out / "report.json").read_text())["rounds"]
    stage_s = {s: sum(r[f"time/{s}_s"] for r in rows) for s in STAGES}
    outside = seconds - sum(r["time/round_s"] for r in rows)
    share = [Figure(f"share: {s}", 100 * v / seconds, "%") for s, v in stage_s.items()]
    return BenchResult(
        "demo",
        figures=[
            Figure("evolve-ray demo wall time", seconds, "s", goal=Goal("value", "<=", LIMIT_S)),
            *share,
            Figure("share: outside rounds (start-up, shutdown)", 100 * outside / seconds, "%"),
        ],
        settings={
            "command": " ".join(["evolve-ray", *cmd[3:5], "TMP", *cmd[6:]]),
            "rounds": len(rows),
            **{f"{s}_s": round(v, 2) for s, v in stage_s.items()},
            "outside_rounds_s": round(outside, 2),
        },
        memory_mb={"demo driver process": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
    )
