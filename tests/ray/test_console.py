"""What a person sees: `evolve-ray demo` as its own process, its console from start to end (about
60 lines, ending with the headline table that report.json holds), the rest in RUN/run.log, and
`evolve-ray status RUN` while it runs and after it finished."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from evolve_ray.reporting.report import load_rows
from evolve_ray.reporting.status import format_status

from .cli_process import REPO, Driver, cli_env

SMALL_DEMO = [
    "run.rounds=2",
    "data.prompts_per_round=8",
    "data.eval_prompts=16",
    "training.batch_size=4",
    "cluster.num_cpus=4",
    "cluster.include_dashboard=false",
]


def _wait_for_running(run: Path, d: Driver, timeout: float) -> str:
    """format_status of the live run once its driver is inside a stage."""
    deadline = time.time() + timeout
    while time.time() < deadline and d.running():
        d.track()
        status = run / "status.json"
        if status.is_file():
            doc = json.loads(status.read_text())
            if doc["state"] == "running" and doc["stage"]:
                return format_status(run)
        time.sleep(0.5)
    raise AssertionError(f"the run never reported a stage; log: {d.output()[-3000:]}")


def test_demo_console_is_short_ends_with_the_table_and_status_follows_it(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    d = Driver(["demo", "--out", str(run), *[a for s in SMALL_DEMO for a in ("--set", s)]], tmp_path / "out.log")
    try:
        live = _wait_for_running(run, d, timeout=600)
        assert d.wait(timeout=900) == 0, d.output()[-3000:]
        # The quick exit (cli.exit_quickly) stopped the driver's cluster before it left.
        assert d.wait_for_exit(("raylet", "gcs_server"), timeout=15) == []
    finally:
        d.cleanup()
    assert "state: running (pid" in live and ", stage " in live, live

    out = d.output()
    lines = out.rstrip("\n").split("\n")  # a progress bar redraws with \r inside one line
    assert len(lines) <= 60, f"{len(lines)} lines:\n{out}"
    for noise in ("Reporting training result", "RotaryEmbedding", "Traceback", "(GeneratorActor pid="):
        assert noise not in out, noise
    assert sum("round 1 evaluate: accuracy by turn" in line for line in lines) == 1

    # The table at the end is report.json's: direct accuracy, turn accuracies and pairs per round.
    rows = load_rows(run)
    assert [r["round"] for r in rows] == [-1, 0, 1]  # -1: the starting policy, before round 0
    assert sum("round start evaluate: accuracy by turn" in line for line in lines) == 1
    title = lines.index("held-out accuracy by refinement turn (turn 0 = the direct answer):")
    table = lines[title + 2 : title + 6]
    assert table[0].split()[:3] == ["round", "direct", "accuracy"]
    for printed, row in zip(table[1:], rows, strict=True):
        cells = printed.split()
        assert cells[0] == ("start" if row["round"] == -1 else str(row["round"]))
        assert cells[1:5] == [f"{row[f'eval/turn_{t}_accuracy']:.3f}" for t in range(4)]
        assert cells[5:8] == [
            f"{row['eval/acc_turn_1_improved_frac']:.3f}",
            "/",
            f"{row['eval/acc_turn_1_degraded_frac']:.3f}",
        ]
        assert cells[8] == (str(int(row["pairs/count"])) if "pairs/count" in row else "-")
    assert lines[-1] == f"log:    {run / 'run.log'}" and f"report: {run / 'report.md'}" in out

    log = (run / "run.log").read_text()
    assert "Reporting training result" in log and "(GeneratorActor pid=" in log  # kept, just not on the console
    assert "RotaryEmbedding: Failed to load weights" not in log  # filtered at the source (vllm_engine.py)
    assert "Autoscaler status" not in log  # its status block every 5 s (console._autoscaler_events)
    # the start-up split of a process's first run, imports included (evolve_ray/driver/timeline.py)
    assert re.search(r"time outside the rounds: imports [\d.]+ s, cluster [\d.]+ s, actors [\d.]+ s", log)

    done = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "status", str(run)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "state: finished" in done.stdout and "policy version: 2" in done.stdout
    assert "generators: 1 (0:vllm)" in done.stdout and table[1] in done.stdout
