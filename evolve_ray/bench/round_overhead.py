"""round_overhead: the seconds a round spends between stages, against a fresh TorchTrainer.fit
start (TrainerGroup.startup_seconds(), measured in the same run).

- last pair -> first step: train/first_step_delay_s, from the driver handing the round's pairs to
  TrainerGroup.train_round until rank 0 starts its first optimizer step (hand-off, tokenizing,
  frozen reference log-probs, optimizer set-up).
- last step -> serving: from the end of the last optimizer step until every generator serves the
  new version: train/save_seconds + sync/seconds (gather, checkpoint, push).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import ray

from evolve_ray.bench.context import GEN_SPEC, BenchContext, param_count, peak_rss_of, synthetic_pairs, wall
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.train.job import TrainerGroup

ROUNDS = 2
PAIRS = 16
LIMIT_S = 2.0
STARTUP_TIMEOUT_S = 300.0
PEER = "fresh fit start"


def wait_started(group: TrainerGroup) -> float:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while (seconds := group.startup_seconds()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the trainer's worker group did not start within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return seconds


def run(ctx: BenchContext) -> BenchResult:
    cfg = ctx.gen_config()  # the demo's trainer settings (2 workers x 0.5 CPU, evolve loss) on the bench model
    t = cfg.training
    group = TrainerGroup(cfg, cfg.model.policy, ctx.workdir / "round_overhead", cfg.model.policy)
    gens = ctx.generators(1)
    group.start()
    try:
        startup = wait_started(group)
        pairs = synthetic_pairs(PAIRS, ("direct", "refine"))
        rounds: list[dict[str, Any]] = []
        for r in range(ROUNDS):
            seconds, m = wall(partial(group.train_round, r, pairs, gens))
            rounds.append(
                {
                    "train_round_wall_s": seconds,
                    "to_first_step_s": m["train/first_step_delay_s"],
                    "frozen_logps_s": m["train/frozen_logps_seconds"],
                    "to_serving_s": m["train/save_seconds"] + m["sync/seconds"],
                    "save_s": m["train/save_seconds"],
                    "sync_s": m["sync/seconds"],
                    "train_s": m["train/seconds"],
                    "steps": m["train/steps"],
                }
            )
        pids = m["train/worker_pids"]
        memory = {f"train worker rank {i}": peak_rss_of(pid) for i, pid in enumerate(pids)}
        memory["GeneratorActor"] = ray.get(gens[0].info.remote())["peak_rss_mb"]
    finally:
        group.shutdown()
    figures = []
    for r, row in enumerate(rounds):
        which = "first round" if r == 0 else f"round {r}"
        goal = Goal("value", "<=", LIMIT_S)
        figures.append(Figure(f"{which}: last pair -> first step", row["to_first_step_s"], "s", startup, PEER, goal))
        figures.append(Figure(f"{which}: last step -> serving v{r + 1}", row["to_serving_s"], "s", startup, PEER, goal))
    return BenchResult(
        "round_overhead",
        figures=figures,
        settings={
            "model_params_M": param_count(GEN_SPEC) / 1e6,
            "workers": f"{t.num_workers} x {t.cpus_per_worker} CPU ({t.strategy})",
            "loss": t.loss,
            "pairs_per_round": f"{PAIRS} prompts x (direct, refine)",
            "generators": 1,
            "startup_s": startup,
            **{f"round{r}": {k: round(v, 3) for k, v in row.items()} for r, row in enumerate(rounds)},
        },
        memory_mb=memory,
        notes=[
            f"first round {rounds[0]['to_first_step_s']:.1f} s to its first step, later rounds "
            f"{rounds[-1]['to_first_step_s']:.1f} s (the generator handles reach rank 0 as one object-store "
            "reference: the coordinator never unpickles them, which cost it ~3-5 s the first time)",
            f"of the last pair -> first step, frozen reference log-probs (a no-grad forward over all "
            f"{PAIRS} prompts' pairs before the first step) took {rounds[-1]['frozen_logps_s']:.2f} s in the last round",
            "train_round's wall time (settings) also holds the round's Ray Train report and the hand-back of "
            "its metrics, which come after the generators already serve the new version",
        ],
    )
