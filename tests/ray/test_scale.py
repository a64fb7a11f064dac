"""Scaling a running run for real: `evolve-ray scale` (the command, in its own process) adds a
generator and a scorer during round 0's collect; the control actor then takes them back during
round 1's. Each
round still has every prompt's chain exactly once, and the pushes reach the generators alive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evolve_ray.config import replace
from evolve_ray.control import request_scale
from evolve_ray.report import load_rows

from .cli_process import REPO, cli_env
from .test_faults import TURNS, _run_in_background, _slow_cfg, _wait_for_candidates

PROMPTS = 48  # in batches of 2, 24 tokens each: work is left once a generator added by the scale
# command (a new process) has started its own engine and joins


def _claims(run: Path, round_: int) -> pd.DataFrame:
    """Every hand-out of the round in journal order: (prompt_id, worker); worker -1 is a release."""
    parts = sorted((run / "rounds" / f"r{round_:03d}" / "journal" / "claims").glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _check_chains(run: Path, round_: int) -> None:
    cands = pd.read_parquet(run / "rounds" / f"r{round_:03d}" / "candidates.parquet")
    assert cands["id"].is_unique
    assert cands["prompt_id"].nunique() == PROMPTS
    assert cands.groupby("prompt_id").size().eq(TURNS + 1).all()  # every chain complete, exactly once


def _wait_for_file(path: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scaled_run(ray_cluster, tiny_models, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("scale") / "run"
    # The fault tests' settings (transformers backend: slow enough to be caught mid-round), more
    # prompts, in batches of 2, so that work is left for a generator that joins.
    cfg = replace(
        _slow_cfg(run, tiny_models),
        run={"rounds": 2},
        data={"prompts_per_round": PROMPTS},
        generation={"num_generators": 1, "max_work_batch": 2, "max_new_tokens": 24},
    )
    thread, box = _run_in_background(cfg)
    _wait_for_candidates(2)
    out = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "scale", str(run), "--generators", "2", "--scorers", "2"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "2 generator(s), 2 scorer(s)" in out.stdout
    _wait_for_file(run / "rounds" / "r001" / "journal" / "candidates" / "part-000001.parquet")
    assert request_scale(str(run), {"generator": 1, "scorer": 1}) == {"generator": 1, "scorer": 1}
    thread.join(timeout=900)
    assert box, "the run did not finish"
    return run


def test_a_generator_added_mid_collect_takes_work_and_gets_the_push(scaled_run: Path) -> None:
    _check_chains(scaled_run, 0)
    taken = _claims(scaled_run, 0)
    taken = taken[taken["worker"] >= 0].reset_index(drop=True)
    assert set(taken["worker"]) == {0, 1}  # the added generator took prompts in round 0
    assert taken["worker"].iloc[0] == 0  # ... after generator 0 had started
    row0 = load_rows(scaled_run)[0]
    assert row0["round"] == 0 and row0["fleet/generators"] == 2 and row0["fleet/scorers"] == 2
    assert row0["sync/generators_reached"] == 2  # round 0's push reached both


def test_a_generator_scaled_down_mid_collect_finishes_its_batch_and_leaves(scaled_run: Path) -> None:
    _check_chains(scaled_run, 1)
    taken = _claims(scaled_run, 1)
    taken = taken[taken["worker"] >= 0].reset_index(drop=True)
    last_of_1 = taken.index[taken["worker"] == 1].max()
    assert last_of_1 < taken.index[taken["worker"] == 0].max()  # generator 0 still took work after 1 left
    row1 = load_rows(scaled_run)[1]
    assert row1["fleet/generators"] == 1 and row1["sync/generators_reached"] == 1
    assert row1["fleet/scorers"] == 1  # the second scorer left at the end of round 1's collect
    scores = pd.read_parquet(scaled_run / "rounds" / "r001" / "candidates.parquet")["score"]
    assert scores.notna().all()  # every candidate scored, whichever scorer did it


def test_scale_refuses_a_run_that_is_not_running(scaled_run: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "scale", str(scaled_run), "--generators", "3"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("evolve-ray: error: no run 'run' is running"), out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads((scaled_run / "control.json").read_text())["namespace"] == "evolve_ray.run"
