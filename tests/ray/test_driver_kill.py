"""The driver itself SIGKILLed (at each stage boundary, and in the middle of generation), then
`evolve-ray run --resume RUN` in a new process: the run finishes with exactly the prompts,
candidates and pairs of an uninterrupted run of the same config (greedy decoding, fixed seeds):
no duplicate, no gap.

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

from evolve_ray.report import load_rows
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


def kill_and_resume(tiny_models, tmp_path: Path, when: Callable[[Path], bool]) -> tuple[Path, dict | None]:
    """Run until `when(run)` holds, SIGKILL the driver, wait for its run processes to go, resume.
    Returns the run directory and the state.json seen right after the kill."""
    run = tmp_path / "run"
    first = Driver(run_args(tiny_models, run), tmp_path / "first.log")
    resumed = None
    try:
        deadline, last_track = time.time() + 900, 0.0
        while not when(run):
            assert first.running(), f"the run ended before the kill point: {first.output()[-3000:]}"
            assert time.time() < deadline, "kill point never reached"
            if time.time() - last_track > 0.5:
                first.track()
                last_track = time.time()
            time.sleep(0.01)
        first.kill()
        at_kill = state(run)
        # Ray's fate sharing ends the raylet, and with it every worker, once the driver is gone.
        assert first.wait_for_exit(RUN_PROCESSES, timeout=60) == []
        resumed = Driver(["run", "--resume", str(run)], tmp_path / "resume.log")
        rc = resumed.wait(timeout=900)
        assert rc == 0, resumed.output()[-3000:]
        assert "started a local Ray cluster" in resumed.output()  # a fresh one, beside the orphans
    finally:
        first.cleanup()
        if resumed is not None:
            resumed.cleanup()
    assert first.survivors() == [] and (resumed is None or resumed.survivors() == [])
    return run, at_kill


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


def test_driver_killed_mid_generation_resumes_to_the_same_run(tiny_models, tmp_path, reference) -> None:
    run, at_kill = kill_and_resume(tiny_models, tmp_path, mid_generation(0))
    assert at_kill is None  # killed before round 0's collect completed
    check_finished_like_reference(run, reference)


@pytest.mark.parametrize(
    ("name", "when", "expected"),
    [
        ("after collect", completed(0, "collect"), {"round": 0, "stage": "collect"}),
        ("after train", completed(0, "train"), {"round": 0, "stage": "train"}),
        ("after evaluate", completed(0, "evaluate"), {"round": 0, "stage": "evaluate"}),
        ("mid round 1 generation", mid_generation(1), {"round": 0, "stage": "evaluate"}),
    ],
)
def test_driver_killed_at_each_stage_boundary(tiny_models, tmp_path, reference, name, when, expected) -> None:
    run, at_kill = kill_and_resume(tiny_models, tmp_path, when)
    assert at_kill == expected, name
    check_finished_like_reference(run, reference)
