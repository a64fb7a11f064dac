"""BufferActor: the shared buffer between generation, scoring and training (a thin shell
around core.buffer.BufferState; every event is journaled in the run directory)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray

from evolve_ray.config import Config
from evolve_ray.core.buffer import BufferState, RoundJournal
from evolve_ray.core.selection import Selection, select_pairs
from evolve_ray.rundir import round_dir
from evolve_ray.tasks.base import Task
from evolve_ray.types import Candidate, PreferencePair, Prompt, Score, ScoredCandidate

log = logging.getLogger(__name__)


def make_selector(cfg: Config, round_: int, extract_answer=None):
    s = cfg.selection

    def select(prompt: Prompt, scored: list[ScoredCandidate]) -> Selection:
        return select_pairs(
            s.rule,
            prompt.question,
            scored,
            template=cfg.refinement.template,
            round=round_,
            min_margin=s.min_margin,
            min_chosen_score=s.min_chosen_score,
            tie_tolerance=s.tie_tolerance,
            keep_pairs=s.keep_pairs,
            consistency_turns=s.consistency_turns,
            extract_answer=extract_answer,
        )

    return select


@ray.remote(num_cpus=0, max_restarts=-1)
class BufferActor:
    def __init__(self, cfg: Config, run_dir: str, task: Task) -> None:
        logging.basicConfig(level=cfg.run.log_level)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.state: BufferState | None = None
        self.generation_finished = False
        self.workers = 1  # generators sharing the round's work (sets the guided batch size)
        self.first_candidate: float | None = None  # when this actor first got a candidate (start-up split)
        self.extract = task.extract_answer if task.verifiable else None
        self.verify = task.verify if task.verifiable else None
        self._reopen_latest()  # after a crash and restart by Ray: continue the round in progress

    def _reopen_latest(self) -> None:
        journals = sorted((self.run_dir / "rounds").glob("r*/journal/prompts"))
        if journals:
            round_ = int(journals[-1].parent.parent.name[1:])
            journal = RoundJournal(journals[-1].parent)
            self.state = BufferState(round_, journal, make_selector(self.cfg, round_, self.extract))
            log.info("buffer reopened round %d from its journal (%d candidates)", round_, len(self.state.candidates))

    def open_round(self, round_: int, prompts: list[Prompt]) -> dict:
        """Start (or, after a restart, resume from the journal) the round with these prompts.
        Idempotent: opening the round that is already open changes nothing."""
        if self.state is not None and self.state.round == round_:
            return self.state.summary()
        journal = RoundJournal(round_dir(self.run_dir, round_) / "journal")
        self.state = BufferState(round_, journal, make_selector(self.cfg, round_, self.extract))
        self.state.add_prompts(prompts)
        self.generation_finished = False
        return self.state.summary()

    def add_candidates(self, cands: list[Candidate], finished: list[str]) -> int:
        if cands and self.first_candidate is None:
            self.first_candidate = time.time()
        return self._s.add_candidates(cands, finished)

    def first_candidate_at(self) -> float | None:
        return self.first_candidate

    def set_workers(self, n: int) -> None:
        self.workers = n

    def take_work(self, worker: int, max_batch: int) -> tuple[list[Prompt], list[Candidate]]:
        """Generator `worker`'s next prompts, with their candidates already in the journal (a
        prompt given back by a dead generator resumes where it stopped). Empty: no more work."""
        prompts = self._s.take_work(worker, workers=self.workers, max_batch=max_batch)
        return prompts, self._s.candidates_of([p.id for p in prompts])

    def release_work(self, worker: int | None = None) -> int:
        return self._s.release_work(worker)

    def retire(self, worker: int, retiring: bool = True) -> None:
        if self.state is not None:  # before the first round opens there is no work to withhold
            self.state.retire(worker, retiring)

    def generation_done(self) -> None:
        self.generation_finished = True

    def next_for_scoring(self, n: int) -> tuple[list[tuple[Candidate, Prompt]], bool]:
        """A micro-batch to score, and whether scoring is over (generation done, queue empty)."""
        batch = self._s.take_unscored(n)
        done = self.generation_finished and not batch and not self._s.unscored and not self._s.inflight
        return batch, done

    def add_scores(self, scores: list[Score]) -> None:
        self._s.add_scores(scores)

    def requeue_inflight(self) -> int:
        return self._s.requeue_inflight()

    def pending_prompts(self) -> list[str]:
        return self._s.pending_prompts()

    def candidates_of(self, prompt_ids: list[str]) -> list[Candidate]:
        return self._s.candidates_of(prompt_ids)

    def pairs(self, rank: int = 0, world_size: int = 1) -> list[PreferencePair]:
        ordered = sorted(self._s.pairs.values(), key=lambda p: p.id)
        return ordered[rank::world_size]

    def complete(self) -> bool:
        return self._s.complete()

    def summary(self) -> dict[str, float]:
        return self._s.summary()

    def finalize(self) -> dict[str, float]:
        """Write the round's consolidated candidates.parquet and pairs.parquet; the round's metrics."""
        self._s.export(round_dir(self.run_dir, self._s.round))
        return self._s.round_metrics(
            tolerance=self.cfg.run.unchanged_tolerance,
            verify=self.verify,
            reward_model=self.cfg.scoring.kind == "reward_model",
        )

    @property
    def _s(self) -> BufferState:
        if self.state is None:
            raise RuntimeError("no round is open: call open_round first")
        return self.state
