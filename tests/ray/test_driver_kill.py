"""The driver itself SIGKILLed at each stage boundary and in the middle of generation, each time
followed by `evolve-ray run --resume RUN` in a new process: the run finishes with exactly the
prompts, candidates and pairs of an uninterrupted run of the same config (greedy decoding, fixed
seeds): no duplicate, no gap. One run takes all five kills in turn (a resume of a resumed run is
the harder case, and one chain of drivers costs half the cluster start-ups of one run per kill).

Each driver is `evolve-ray run` in its own process with its own local Ray cluster (not the test
session's). A SIGKILLed driver takes its GCS and raylet down with it (Ray's fate sharing) but its
dashboard and runtime-env agents live on as orphans: the resume must start a fresh cluster beside
them, and the test kills them by pid afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from evolve_ray.reporting.report import load_rows
from evolve_ray.rundir import read_parquet_rows

from .cli_process import Driver

ROUNDS, PROMPTS, TURNS = 2, 8, 2
PAIR_COLUMNS = ["id", "kind", "chosen_id", "rejected_id", "prompt", "chosen", "rejected"]
# Processes that write into the run directory or hold its actors; the agents are Ray's own.
RUN_PROCESSES = (
    "ray::BufferActor",
    "ray::GeneratorActor",
    "ray::ScorerActor",
    "ray::RayTrainWorker",
    "ray::TrainController",
    "raylet",
    "gcs_server",
)


def run_args(tiny_models, out: Path) -> list[str]:
    sets = [
        f"model.policy={tiny_models['policy']}",
        f"model.reward={tiny_models['reward']}",
        f"run.rounds={ROUNDS}",
        "run.eval_turns=1",
        f"data.prompts_per_round={PROMPTS}",
        "data.eval_prompts=2",
        f"generation.turns={TURNS}",
        "generation.temperature=0",  # greedy: an interrupted run must reproduce the same text
        "generation.backend=transformers",  # prompt by prompt: a wide window to kill mid-generation
        "training.batch_size=4",
        "cluster.num_cpus=4",
        "cluster.include_dashboard=false",
    ]
    return ["run", "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def state(run: Path) -> dict | None:
    try:
        return json.loads((run / "state.json").read_text())["last"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def journal_candidates(run: Path, round_: int) -> int:
    return len(list((run / "rounds" / f"r{round_:03d}" / "journal" / "candidates").glob("part-*.parquet")))


def completed(round_: int, stage: str) -> Callable[[Path], bool]:
    return lambda run: state(run) == {"round": round_, "stage": stage}


def mid_generation(round_: int) -> Callable[[Path], bool]:
    """Some of the round's candidates are in the journal, and its collect stage is not done."""
    previous = {"round": round_ - 1, "stage": "evaluate"} if round_ else None
    return lambda run: journal_candidates(run, round_) >= 1 and state(run) == previous


def snapshot(run: Path) -> dict[str, Any]:
    """Per round: the journal's prompts, and the final candidates and pairs (ids, lineage, text)."""
    out: dict[str, Any] = {}
    for r in range(ROUNDS):
        d = run / "rounds" / f"r{r:03d}"
        journal = {k: read_parquet_rows((d / "journal" / k).glob("part-*.parquet")) for k in ("prompts", "pairs")}
        for kind, rows in journal.items():  # the journal itself holds nothing twice
            ids = [row["id"] for row in rows]
            assert len(ids) == len(set(ids)), f"{kind} journaled twice in {d}"
        cands = pd.read_parquet(d / "candidates.parquet")
        pairs = pd.read_parquet(d / "pairs.parquet").reindex(columns=PAIR_COLUMNS)  # none: no columns either
        assert cands["id"].is_unique and pairs["id"].is_unique
        assert cands.groupby("prompt_id").size().eq(TURNS + 1).all() and cands["prompt_id"].nunique() == PROMPTS
        out[f"r{r}/prompts"] = sorted((p["id"], p["question"]) for p in journal["prompts"])
        out[f"r{r}/candidates"] = sorted(
            cands[["id", "parent_id", "text", "policy_version"]].itertuples(index=False, name=None)
        )
        # Scores are compared with a tolerance: micro-batches differ after a resume, and so may
        # the last bits of a padded forward pass.
        out[f"r{r}/scores"] = cands.set_index("id")["score"].sort_index()
        out[f"r{r}/pairs"] = sorted(pairs.itertuples(index=False, name=None))
    return out


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    d = Driver(run_args(tiny_models, run), run.parent / "driver.log")
    try:
        assert d.wait(timeout=900) == 0, d.output()[-3000:]
    finally:
        d.cleanup()
    snap = snapshot(run)
    assert snap["r0/pairs"] and snap["r1/pairs"], "no pairs: the comparison would cover nothing"
    return snap


# The kill points in the order a run reaches them, with the state.json each must leave behind.
KILLS = [
    ("mid round 0 generation", mid_generation(0), None),  # before round 0's collect completed
    ("after collect", completed(0, "collect"), {"round": 0, "stage": "collect"}),
    ("after train", completed(0, "train"), {"round": 0, "stage": "train"}),
    ("after evaluate", completed(0, "evaluate"), {"round": 0, "stage": "evaluate"}),
    ("mid round 1 generation", mid_generation(1), {"round": 0, "stage": "evaluate"}),
]


def wait_until(driver: Driver, run: Path, when: Callable[[Path], bool], timeout: float = 900) -> None:
    deadline, last_track = time.time() + timeout, 0.0
    while not when(run):
        assert driver.running(), f"the run ended before the kill point: {driver.output()[-3000:]}"
        assert time.time() < deadline, "kill point never reached"
        if time.time() - last_track > 0.5:
            driver.track()
            last_track = time.time()
        time.sleep(0.01)


@pytest.fixture(scope="module")
def killed_at_every_point(tiny_models, tmp_path_factory) -> tuple[Path, dict[str, tuple[dict | None, str]]]:
    """One run SIGKILLed at every kill point in turn, each time resumed by a new `--resume` driver
    (so every resume but the first starts from a run that was itself resumed), the last resume left
    to finish. Returns the run directory and, per kill point, the state.json seen right after the
    kill and the output of the driver that resumed from it."""
    tmp = tmp_path_factory.mktemp("killed")
    run = tmp / "run"
    driver = Driver(run_args(tiny_models, run), tmp / "first.log")
    drivers, resumed_from = [driver], {}
    try:
        for i, (name, when, _) in enumerate(KILLS):
            wait_until(driver, run, when)
            driver.kill()
            at_kill = state(run)
            # Ray's fate sharing ends the raylet, and with it every worker, once the driver is gone.
            assert driver.wait_for_exit(RUN_PROCESSES, timeout=60) == [], name
            driver = Driver(["run", "--resume", str(run)], tmp / f"resume{i}.log")
            drivers.append(driver)
            resumed_from[name] = (at_kill, driver)
        rc = driver.wait(timeout=900)
        assert rc == 0, driver.output()[-3000:]
    finally:
        for d in drivers:
            d.cleanup()
    assert [d.survivors() for d in drivers] == [[]] * len(drivers)
    return run, {name: (at_kill, d.output()) for name, (at_kill, d) in resumed_from.items()}


def check_finished_like_reference(run: Path, reference: dict[str, Any]) -> None:
    assert state(run) == {"round": ROUNDS - 1, "stage": "evaluate"}
    assert [r["round"] for r in load_rows(run)] == [-1, *range(ROUNDS)]  # -1: the start row
    for r in range(ROUNDS):
        assert (run / "checkpoints" / f"r{r:03d}" / "model.safetensors").is_file()
    got = snapshot(run)
    for key, want in reference.items():
        if key.endswith("/scores"):
            pd.testing.assert_series_equal(got[key], want, atol=1e-5, rtol=0)
        else:
            assert got[key] == want, f"{key} differs from the uninterrupted run"


@pytest.mark.parametrize(("name", "expected"), [(name, expected) for name, _, expected in KILLS])
def test_driver_killed_at_each_point_leaves_its_state_and_a_fresh_cluster_resumes(
    killed_at_every_point, name, expected
) -> None:
    at_kill, resume_log = killed_at_every_point[1][name]
    assert at_kill == expected, name
    assert "started a local Ray cluster" in resume_log  # a fresh one, beside the orphans


def test_the_run_killed_at_every_point_finishes_like_an_uninterrupted_one(killed_at_every_point, reference) -> None:
    run, _ = killed_at_every_point
    check_finished_like_reference(run, reference)
