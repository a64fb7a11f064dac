"""SIGTERM to a running `evolve-ray run` (as `kill`, a job runner or a container stop sends it): the
driver stops its actors and trainer, records the run as interrupted, stops its cluster and exits
with 143 and one line, no traceback and no native stack trace; nothing it started is left, and
`--resume` finishes the run with every chain exactly once.

The run is a fresh `run --set generation.num_generators=2` with the cluster defaults (a local
cluster sized by the run, dashboard and token authentication on): before the run sized its
cluster, two generators and the train workers did not fit this machine's logical CPUs and the
run waited at its first train stage without end. It is stopped once it has trained a round.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd

from evolve_ray.reporting.report import load_rows

from .cli_process import Driver
from .test_scale import TURNS, run_args, user_env, wait_until

PROMPTS = 8


def _state(run: Path) -> dict | None:
    try:
        return json.loads((run / "state.json").read_text())["last"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_sigterm_stops_a_run_cleanly_and_resume_finishes_it(tiny_models, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["run.rounds=2", f"data.prompts_per_round={PROMPTS}", "generation.num_generators=2"]
    d = Driver(run_args(run, tiny_models, *sets), tmp_path / "driver.log", env=user_env())
    try:
        candidates = run / "rounds" / "r001" / "journal" / "candidates"
        wait_until(
            d,
            lambda: _state(run) == {"round": 0, "stage": "evaluate"} and any(candidates.glob("part-*.parquet")),
            "round 1's collect",
            timeout=900,
        )
        d.track()
        d.proc.send_signal(signal.SIGTERM)
        t = time.time()
        rc = d.wait(timeout=120)
        stopped_s = time.time() - t
        left = d.wait_for_exit(("",), timeout=30)  # every process the driver started
    finally:
        d.cleanup()
    out = d.output()
    assert rc == 143, out[-3000:]
    assert (
        out.rstrip().splitlines()[-1] == "evolve-ray: stopped by SIGTERM; continue with `evolve-ray run --resume RUN`"
    )
    for trace in ("Traceback", "*** SIGTERM", "Stack trace", "@ 0x"):  # Python's, and the core worker's native one
        assert trace not in out, out[-3000:]
    assert left == [], left
    assert stopped_s < 60, stopped_s
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert _state(run) == {"round": 0, "stage": "evaluate"}  # the last completed stage: resumable

    resumed = Driver(["run", "--resume", str(run)], tmp_path / "resume.log", env=user_env())
    try:
        assert resumed.wait(timeout=900) == 0, resumed.output()[-3000:]
    finally:
        resumed.cleanup()
    assert [r["round"] for r in load_rows(run)] == [-1, 0, 1]
    for r in (0, 1):
        cands = pd.read_parquet(run / "rounds" / f"r{r:03d}" / "candidates.parquet")
        assert cands["id"].is_unique and cands["prompt_id"].nunique() == PROMPTS
        assert cands.groupby("prompt_id").size().eq(TURNS + 1).all()  # the journal's chains, none twice
    assert load_rows(run)[1]["fleet/generators"] == 2
    assert (run / "checkpoints" / "r001" / "model.safetensors").is_file()
