"""Soak: ten rounds of the tiny demo; every actor's resident memory after round 10 is within 10% of
what it was after round 2 (no leak per round), and no actor was restarted along the way."""

from __future__ import annotations

import psutil
import ray
from ray._private import state

from evolve_ray.driver import loop
from evolve_ray.reporting.report import load_rows

from .test_run import tiny_cfg

ROUNDS = 10


def actor_rss() -> dict[tuple[str, int], int]:
    """Resident bytes of every live actor of this job, keyed by (class, pid)."""
    job = ray.get_runtime_context().get_job_id()
    out = {}
    for a in state.actors().values():
        if a["State"] == "ALIVE" and a["JobID"] == job:
            out[(a["ActorClassName"], a["Pid"])] = psutil.Process(a["Pid"]).memory_info().rss
    return out


def test_actor_memory_is_flat_over_ten_rounds(ray_cluster, tiny_models, tmp_path, monkeypatch) -> None:
    after: dict[int, dict[tuple[str, int], int]] = {}
    real_evaluate = loop.evaluate

    def evaluate_then_measure(s, r):  # the round's last stage: generators and scorers are idle
        out = real_evaluate(s, r)
        after[r] = actor_rss()
        return out

    monkeypatch.setattr(loop, "evaluate", evaluate_then_measure)
    cfg = tiny_cfg(
        tmp_path / "run",
        tiny_models,
        f"run.rounds={ROUNDS}",
        "data.prompts_per_round=16",  # the demo's sizes (config defaults), on the tiny models
        "data.eval_prompts=8",
        "generation.turns=3",
        "run.eval_turns=3",
        "training.batch_size=8",
    )
    run = loop.run(cfg)
    assert [r["round"] for r in load_rows(run)] == [-1, *range(ROUNDS)]  # -1: the start row

    second, tenth = after[1], after[ROUNDS - 1]
    assert set(second) == set(tenth)  # the same processes: nothing restarted
    classes = {cls for cls, _ in second}
    assert {"GeneratorActor", "ScorerActor", "BufferActor", "RayTrainWorker", "TrainCoordinator"} <= classes
    for key in sorted(second):  # MiB after each round (-: not yet started, e.g. Ray's own actors); -s shows it
        mib = [f"{after[r][key] >> 20:5d}" if key in after[r] else "    -" for r in range(ROUNDS)]
        print(f"{key[0]:>28} {key[1]:>7}:", " ".join(mib))
    grown = {
        f"{cls} pid {pid}": f"{second[(cls, pid)] >> 20} MiB -> {tenth[(cls, pid)] >> 20} MiB"
        for cls, pid in second
        if abs(tenth[(cls, pid)] - second[(cls, pid)]) > 0.10 * second[(cls, pid)]
    }
    assert not grown, grown
