"""Faults injected for real during a run's collect stage: the round still completes, every
prompt's chain exists exactly once, pairs are not duplicated, and restarts are counted."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import ray

from evolve_ray.driver import loop
from evolve_ray.driver.fleet import Fleet
from evolve_ray.reporting.report import load_rows

from .test_run import tiny_cfg

PROMPTS, TURNS = 24, 3


def _run_in_background(cfg) -> tuple[threading.Thread, list]:
    box: list = []
    t = threading.Thread(target=lambda: box.append(loop.run(cfg)), daemon=True)
    t.start()
    return t, box


def _wait_for_candidates(n: int, timeout: float = 300) -> None:
    """Block until the named buffer holds at least n candidates (generation under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            buf = ray.get_actor("buffer")
            if ray.get(buf.summary.remote())["buffer/candidates"] >= n:
                return
        except (ValueError, RuntimeError, ray.exceptions.RayError):
            pass  # not created yet, or no round open yet
        time.sleep(0.05)
    raise AssertionError("generation never started")


def _check_round(run: Path) -> dict:
    cands = pd.read_parquet(run / "rounds" / "r000" / "candidates.parquet")
    assert cands["id"].is_unique
    assert cands.groupby("prompt_id").size().eq(TURNS + 1).all()  # every chain complete, exactly once
    assert cands["prompt_id"].nunique() == PROMPTS
    pairs = pd.read_parquet(run / "rounds" / "r000" / "pairs.parquet")
    assert pairs["id"].is_unique
    (row,) = load_rows(run)  # eval_prompts=0: no start row
    return row


def _slow_cfg(out: Path, tiny_models):
    # The transformers backend generates prompt by prompt: slow enough to be caught mid-round.
    return tiny_cfg(
        out,
        tiny_models,
        "run.rounds=1",
        f"data.prompts_per_round={PROMPTS}",
        "data.eval_prompts=0",
        f"generation.turns={TURNS}",
        "generation.backend=transformers",
        "generation.num_generators=2",
        "scoring.micro_batch=4",
    )


def _record_replacements(monkeypatch) -> list[tuple[str, str | None, str | None]]:
    """(role, the slot's placement group, the one the replacement runs in) per Fleet replacement."""
    seen: list[tuple[str, str | None, str | None]] = []
    real = Fleet.replace

    def replace(self: Fleet, role: str, i: int) -> None:
        real(self, role, i)
        actor = self.actors[role][i]
        seen.append((role, self.groups[role, i].id.hex(), ray.get(actor.info.remote())["placement_group"]))

    monkeypatch.setattr(Fleet, "replace", replace)
    return seen


def test_generator_and_scorer_killed_mid_round(ray_cluster, tiny_models, tmp_path, monkeypatch) -> None:
    replaced = _record_replacements(monkeypatch)
    t, box = _run_in_background(_slow_cfg(tmp_path / "run", tiny_models))
    _wait_for_candidates(4)
    gen, scorer = (ray.get(ray.get_actor(name).info.remote()) for name in ("generator-0", "scorer-0"))
    table = ray.util.placement_group_table()  # each actor in a group of its own, holding its CPUs
    assert table[gen["placement_group"]]["bundles"] == {0: {"CPU": 0.5}}
    assert table[scorer["placement_group"]]["bundles"] == {0: {"CPU": 0.25}}
    ray.kill(ray.get_actor("generator-0"))  # a clean kill
    os.kill(scorer["pid"], signal.SIGKILL)  # a hard process exit
    t.join(timeout=600)
    assert box, "the run did not finish"
    row = _check_round(tmp_path / "run")
    assert row["fault/generator_restarts"] >= 1 and row["fault/scorer_restarts"] >= 1
    assert {role for role, _, _ in replaced} == {"generator", "scorer"}
    assert all(slot == runs_in for _, slot, runs_in in replaced)  # the replacement took the slot's bundle
    assert {gen["placement_group"], scorer["placement_group"]} <= {slot for _, slot, _ in replaced}


def test_buffer_killed_and_generator_process_exits_mid_round(ray_cluster, tiny_models, tmp_path) -> None:
    t, box = _run_in_background(_slow_cfg(tmp_path / "run", tiny_models))
    _wait_for_candidates(6)
    ray.kill(ray.get_actor("buffer"), no_restart=False)  # Ray restarts it; it replays its journal
    _wait_for_candidates(8)
    pid = ray.get(ray.get_actor("generator-1").info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=600)
    assert box, "the run did not finish"
    row = _check_round(tmp_path / "run")
    assert row["fault/generator_restarts"] >= 1


def test_generator_killed_after_its_share_is_done(ray_cluster, tiny_models, tmp_path) -> None:
    """Killed once collect has finished, while the trainer trains: the weight push skips it and
    counts it, the driver replaces it on the new weights, and the round evaluates."""
    run = tmp_path / "run"
    cfg = tiny_cfg(
        run,
        tiny_models,
        "run.rounds=1",
        "data.prompts_per_round=8",
        "generation.backend=transformers",
        "generation.num_generators=2",
    )
    t, box = _run_in_background(cfg)
    collected = run / "rounds" / "r000" / "metrics.json"  # written when the collect stage is marked
    deadline = time.time() + 300
    while not collected.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert collected.exists(), "collect never finished"
    ray.kill(ray.get_actor("generator-1"))  # the trainer's first step is seconds away
    t.join(timeout=600)
    assert box, "the run did not finish"
    (_, row) = load_rows(run)  # the start row, then round 0
    assert row["sync/generators_lost"] == 1  # the push met the dead generator
    assert row["fault/generator_restarts"] == 1 and row["fault/scorer_restarts"] == 0
    assert row["policy/version"] == 1
    assert "eval/turn_0_score" in row  # evaluated on the replacement
