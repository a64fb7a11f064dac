"""The disk fills up in the middle of a run: the driver stops with one line (no traceback), every
file already in the run directory stays whole (state.json, metrics, the journal: written under a
temporary name, then renamed), and `--resume` finishes once there is space again.

The fault is real: this module's `main` is the CLI with RLIMIT_FSIZE set in the driver right after
the starting policy's evaluation (report.json's row -1), so the kernel refuses (EFBIG, as ENOSPC on a full disk) the driver's first
write past the limit, here round 0's eval.parquet; Ray's processes started before it are unlimited.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

import pandas as pd

from evolve_ray.reporting.report import load_rows

from .cli_process import Driver, cli_env

LIMIT = 4000  # bytes: metrics.json and state.json fit, the eval outputs (~4.3 KB) do not


def main(limit: str, *argv: str) -> None:
    from evolve_ray import cli
    from evolve_ray.driver import loop

    real_start = loop.evaluate_start

    def evaluate_start_then_fill_the_disk(s):
        real_start(s)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))

    loop.evaluate_start = evaluate_start_then_fill_the_disk
    sys.exit(cli.main(list(argv)))


def test_disk_full_mid_run_is_one_line_and_the_run_resumes(tiny_models, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [
        f"model.policy={tiny_models['policy']}",
        f"model.reward={tiny_models['reward']}",
        "run.rounds=2",
        "run.eval_turns=1",
        "data.prompts_per_round=4",
        "data.eval_prompts=2",
        "generation.turns=2",
        "generation.max_new_tokens=16",  # LIMIT is sized for eval outputs of this length
        "generation.backend=transformers",
        "training.batch_size=4",
        "cluster.num_cpus=4",
        "cluster.include_dashboard=false",
    ]
    args = [str(LIMIT), "run", "--out", str(run), *[a for s in sets for a in ("--set", s)]]
    full = Driver(args, tmp_path / "full.log", cli_env(), module="tests.ray.test_disk_full")
    try:
        rc = full.wait(timeout=900)
    finally:
        full.cleanup()
    lines = full.output().splitlines()
    errors = [x for x in lines if x.startswith("evolve-ray: error:")]
    assert rc == 2 and len(errors) == 1, full.output()[-3000:]
    assert f"{run / 'rounds' / 'r000' / 'eval.parquet'}: File too large" in errors[0]
    assert not [x for x in lines if x.startswith("Traceback")]  # the driver's own (Ray's workers log with a prefix)

    # What was written before stays whole: the last completed stage and its metrics, the journal.
    assert json.loads((run / "state.json").read_text())["last"] == {"round": 0, "stage": "train"}
    assert json.loads((run / "rounds" / "r000" / "metrics.json").read_text())["pairs/count"] > 0
    assert len(pd.read_parquet(run / "rounds" / "r000" / "candidates.parquet")) == 4 * 3
    assert not (run / "rounds" / "r000" / "eval.parquet").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp")) == []

    resumed = Driver(["run", "--resume", str(run)], tmp_path / "resume.log")
    try:
        assert resumed.wait(timeout=900) == 0, resumed.output()[-3000:]
    finally:
        resumed.cleanup()
    assert [r["round"] for r in load_rows(run)] == [-1, 0, 1]  # -1: the start row
    for r in ("r000", "r001"):
        assert (run / "rounds" / r / "eval.parquet").is_file()


if __name__ == "__main__":
    main(*sys.argv[1:])
