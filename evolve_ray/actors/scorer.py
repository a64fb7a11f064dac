"""ScorerActor: pulls micro-batches from the buffer as they arrive and attaches scores.

It also picks best-of-N in evaluation (`pick_scores`): with a reward model, never the verifier.
Under scoring.kind=verifier the verifier grades and a reward model, loaded on the first pick,
picks; under scoring.kind=reward_model the two are the same model.
"""

from __future__ import annotations

import logging
import os
import resource
import time

import ray
from ray.util import get_current_placement_group

from evolve_ray.config import Config
from evolve_ray.engines.scoring import RewardModelScorer, Scorer, VerifierScorer
from evolve_ray.tasks.base import Task
from evolve_ray.types import Candidate, Prompt, Score

log = logging.getLogger(__name__)
POLL_S = 0.05  # how long `run` waits before asking an empty buffer again


def make_scorer(cfg: Config, reward_path: str, task: Task) -> Scorer:
    if cfg.scoring.kind == "verifier":
        if not task.verifiable:
            raise ValueError(f"scoring.kind=verifier needs a verifiable task; {task.name} is not")
        return VerifierScorer(task)
    return RewardModelScorer(cfg, reward_path)


# `info` runs in its own thread so a busy actor (a long generate or scoring loop) still answers it.
@ray.remote(concurrency_groups={"control": 1})  # type: ignore[call-overload]  # valid, missing from ray's overloads
class ScorerActor:
    def __init__(self, cfg: Config, reward_path: str, index: int, task: Task) -> None:
        logging.basicConfig(level=cfg.run.log_level)
        self.cfg, self.index, self.reward_path = cfg, index, reward_path
        self.scorer = make_scorer(cfg, reward_path, task)
        self.picker: Scorer | None = self.scorer if cfg.scoring.kind == "reward_model" else None
        self.scored = 0

    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        return {
            "index": self.index,
            "kind": self.cfg.scoring.kind,
            "pid": os.getpid(),
            "placement_group": pg.id.hex() if (pg := get_current_placement_group()) else None,
            "scored": self.scored,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        }

    def score(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]:
        out = self.scorer.score(batch)
        self.scored += len(out)
        return out

    def pick_scores(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]:
        """The reward model's scores, which pick best-of-N (the verifier would read the answer key)."""
        if self.picker is None:
            if not self.reward_path:
                raise ValueError("best-of-N needs a reward model to pick with, and this scorer has none")
            self.picker = RewardModelScorer(self.cfg, self.reward_path)
        return self.picker.score(batch)

    def run(self, buffer) -> dict[str, float]:
        """Score whatever the buffer has, as it arrives, until generation is done and nothing is left."""
        busy = 0.0
        while True:
            batch, done = ray.get(buffer.next_for_scoring.remote(self.cfg.scoring.micro_batch))
            if batch:
                t = time.perf_counter()
                scores = self.score(batch)
                busy += time.perf_counter() - t
                ray.get(buffer.add_scores.remote(scores))
            elif done:
                break
            else:
                time.sleep(POLL_S)
        return {"score/busy_s": busy}
