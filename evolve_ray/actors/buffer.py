"""BufferActor: the shared buffer between generation, scoring and training (a thin shell
around core.buffer.BufferState; every event is journaled in the run directory)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray

from evolve_ray.core.buffer import BufferState, RoundJournal, RoundSelector, Verify
from evolve_ray.rundir import round_dir
from evolve_ray.types import Candidate, PreferencePair, Prompt, Score

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class BufferActor:
    """The driver builds the arguments from the config and the task (driver.builders.buffer_args).

    Args:
        run_dir: the run directory; each round's journal and files go under it.
        selector: the selection rule for a round (it turns a decided prompt's chains into pairs).
        verify: the task's exact checker (verifiable tasks), for the round's accuracy metrics.
        tolerance: score changes at or below this count as unchanged (run.unchanged_tolerance).
        reward_model: the scores are a reward model's (adds its agreement with the verifier).
        log_level: this actor's logging level (run.log_level).
    """

    def __init__(
        self,
        *,
        run_dir: str,
        selector: RoundSelector,
        verify: Verify | None,
        tolerance: float,
        reward_model: bool,
        log_level: str,
    ) -> None:
        logging.basicConfig(level=log_level)
        self.run_dir, self.selector, self.verify = Path(run_dir), selector, verify
        self.tolerance, self.reward_model = tolerance, reward_model
        self.state: BufferState | None = None
        self.generation_finished = False
        self.workers = 1  # generators sharing the round's work (sets the guided batch size)
        self.first_candidate: float | None = None  # when this actor first got a candidate (start-up split)
        self._reopen_latest()  # after a crash and restart by Ray: continue the round in progress

    def _reopen_latest(self) -> None:
        journals = sorted((self.run_dir / "rounds").glob("r*/journal/prompts"))
        if journals:
            round_ = int(journals[-1].parent.parent.name[1:])
            journal = RoundJournal(journals[-1].parent)
            self.state = BufferState(round_, journal, self.selector(round_))
            log.info("buffer reopened round %d from its journal (%d candidates)", round_, len(self.state.candidates))

    def open_round(self, round_: int, prompts: list[Prompt]) -> dict:
        """Start (or, after a restart, resume from the journal) the round with these prompts.
        Idempotent: opening the round that is already open changes nothing."""
        if self.state is not None and self.state.round == round_:
            return self.state.summary()
        journal = RoundJournal(round_dir(self.run_dir, round_) / "journal")
        self.state = BufferState(round_, journal, self.selector(round_))
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

    def pairs(self) -> list[PreferencePair]:
        """The round's pairs, in id order."""
        return sorted(self._s.pairs.values(), key=lambda p: p.id)

    def summary(self) -> dict[str, float]:
        return self._s.summary()

    def finalize(self) -> dict[str, float]:
        """Write the round's consolidated candidates.parquet and pairs.parquet; the round's metrics."""
        self._s.export(round_dir(self.run_dir, self._s.round))
        return self._s.round_metrics(tolerance=self.tolerance, verify=self.verify, reward_model=self.reward_model)

    @property
    def _s(self) -> BufferState:
        if self.state is None:
            raise RuntimeError("no round is open: call open_round first")
        return self.state
