"""The buffer's logic: candidates stream in, scores attach, complete chains become pairs.

Generators pull their work: `take_work` hands a generator its next unfinished prompts (a fair
share of what is left, capped, so a generator added mid-round gets work and a slow one does not
hold the rest of the round back). Every hand-out is
journaled as a claim, so a recreated buffer does not hand a prompt to a second generator while
the first still works on it; `release_work` gives a dead generator's claims back.

A prompt is decided once its generator said it is finished and every candidate has a score;
then the selection rule turns it into pairs (or a recorded reason for none). Every event is
appended to the round's journal as a parquet part file, so a recreated buffer replays the
journal and continues: no candidate or pair is lost or duplicated.
Pure: no ray, no vllm.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from evolve_ray.core.selection import Selection
from evolve_ray.core.stats import accuracy_stats, chain_scores, mean, reward_vs_verifier, turn_lengths, turn_stats
from evolve_ray.rundir import read_parquet_rows, write_parquet
from evolve_ray.types import Candidate, PreferencePair, Prompt, Score, ScoredCandidate, from_row, to_row

Selector = Callable[[Prompt, list[ScoredCandidate]], Selection]
RoundSelector = Callable[[int], Selector]  # a round -> the selection rule that makes that round's pairs
Verify = Callable[[Prompt, str], bool]
KINDS = ("prompts", "candidates", "finished", "scores", "decisions", "pairs", "claims")
RELEASED = -1  # a claims row's worker for "given back"


class RoundJournal:
    """Append-only parquet part files per event kind under RUN/rounds/rNNN/journal/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.next_part = {k: len(list((root / k).glob("part-*.parquet"))) for k in KINDS}

    def append(self, kind: str, rows: list[dict]) -> None:
        if rows:
            write_parquet(self.root / kind / f"part-{self.next_part[kind]:06d}.parquet", rows)
            self.next_part[kind] += 1

    def read(self, kind: str) -> list[dict]:
        return read_parquet_rows((self.root / kind).glob("part-*.parquet"))


class BufferState:
    """One round's candidates, scores, decisions and pairs."""

    def __init__(self, round_: int, journal: RoundJournal, selector: Selector) -> None:
        self.round, self.journal, self.selector = round_, journal, selector
        self.prompts: dict[str, Prompt] = {}
        self.candidates: dict[str, Candidate] = {}
        self.by_prompt: dict[str, list[str]] = {}
        self.scores: dict[str, Score] = {}
        self.finished: set[str] = set()
        self.decisions: dict[str, dict] = {}
        self.pairs: dict[str, PreferencePair] = {}
        self.unscored: deque[str] = deque()
        self.inflight: set[str] = set()
        self.claims: dict[str, int] = {}  # unfinished prompt -> the generator working on it
        self.retiring: set[int] = set()  # generators that take no more work (scaled down)
        self._replay()

    # -- events -------------------------------------------------------------------------------
    def add_prompts(self, prompts: list[Prompt]) -> None:
        new = [p for p in prompts if p.id not in self.prompts]
        self.journal.append("prompts", [to_row(p) for p in new])
        self._apply_prompts(new)

    def add_candidates(self, cands: list[Candidate], finished: list[str]) -> int:
        """Record new candidates (duplicates by id are ignored) and prompts marked finished."""
        new = [c for c in cands if c.id not in self.candidates]
        self.journal.append("candidates", [to_row(c) for c in new])
        fin = [p for p in finished if p not in self.finished]
        self.journal.append("finished", [{"prompt_id": p} for p in fin])
        self._apply_candidates(new)
        self.finished.update(fin)
        for pid in fin:
            self._try_decide(pid)
        return len(new)

    def take_work(self, worker: int, *, workers: int, max_batch: int) -> list[Prompt]:
        """The next prompts for generator `worker` to generate (empty: nothing left for it).

        A generator asks again only after finishing its batch, so its earlier claims are done.
        Batch size: a fair share of the round's unfinished prompts (over `workers`), at most
        `max_batch`: as large as a static split's shard, so an engine batches as much as it
        would with one, while a generator that joins mid-round still finds work once the cap
        leaves some unclaimed. A retiring generator gets nothing (it finishes its batch and
        leaves)."""
        self._drop_claims(worker)
        unfinished = [p for p in self.prompts if p not in self.finished]
        free = [p for p in unfinished if p not in self.claims]
        if worker in self.retiring or not free:
            return []
        size = min(max_batch, -(-len(unfinished) // max(1, workers)))
        batch = free[:size]
        self._claim(batch, worker)
        return [self.prompts[p] for p in batch]

    def release_work(self, worker: int | None = None) -> int:
        """Give back the unfinished prompts `worker` held (it died), or every generator's (none
        is working); returns how many."""
        workers = set(self.claims.values()) if worker is None else {worker}
        return sum(self._drop_claims(w) for w in workers)

    def retire(self, worker: int, retiring: bool = True) -> None:
        """`worker` takes no more work (its current batch is its last), or takes it again (a slot
        scaled down and up again within the round)."""
        if retiring:
            self.retiring.add(worker)
        else:
            self.retiring.discard(worker)

    def take_unscored(self, n: int) -> list[tuple[Candidate, Prompt]]:
        out: list[tuple[Candidate, Prompt]] = []
        while self.unscored and len(out) < n:
            cid = self.unscored.popleft()
            if cid not in self.scores:
                self.inflight.add(cid)
                c = self.candidates[cid]
                out.append((c, self.prompts[c.prompt_id]))
        return out

    def requeue_inflight(self) -> int:
        """Give back candidates handed to a scorer that died before answering."""
        lost = sorted(self.inflight - set(self.scores))
        self.unscored.extendleft(reversed(lost))
        self.inflight.clear()
        return len(lost)

    def add_scores(self, scores: list[Score]) -> None:
        new = [s for s in scores if s.candidate_id not in self.scores and s.candidate_id in self.candidates]
        self.journal.append("scores", [to_row(s) for s in new])
        self._apply_scores(new)
        for pid in {self.candidates[s.candidate_id].prompt_id for s in new}:
            self._try_decide(pid)

    # -- queries ------------------------------------------------------------------------------
    def pending_prompts(self) -> list[str]:
        return [p for p in self.prompts if p not in self.finished]

    def candidates_of(self, prompt_ids: list[str]) -> list[Candidate]:
        return [self.candidates[c] for p in prompt_ids for c in self.by_prompt.get(p, [])]

    def scored(self, pid: str) -> list[ScoredCandidate]:
        out = []
        for cid in self.by_prompt.get(pid, []):
            s = self.scores[cid]
            out.append(ScoredCandidate(self.candidates[cid], s.value, s.invalid_reason))
        return out

    def summary(self) -> dict[str, float]:
        reasons = Counter(d["reason"] for d in self.decisions.values() if d["reason"])
        invalid = Counter(s.invalid_reason for s in self.scores.values() if s.invalid_reason)
        out = {
            "buffer/prompts": float(len(self.prompts)),
            "buffer/candidates": float(len(self.candidates)),
            "buffer/decided": float(len(self.decisions)),
            "pairs/count": float(len(self.pairs)),
            "pairs/prompts_with_pairs": float(sum(1 for d in self.decisions.values() if d["num_pairs"])),
            "score/invalid": float(sum(invalid.values())),
        }
        out.update({f"pairs/dropped_{r}": float(n) for r, n in reasons.items()})
        out.update({f"score/invalid_{r}": float(n) for r, n in invalid.items()})
        return out

    def round_metrics(self, *, tolerance: float, verify: Verify | None, reward_model: bool) -> dict[str, float]:
        """The collect stage's report keys, computed here where the candidates live.

        Args:
            tolerance: score changes at or below this count as unchanged (refine/ shares).
            verify: the task's exact checker, for verifiable tasks: adds per-turn accuracy with
                fixed / broken shares (refine/turn_k_accuracy, refine/acc_turn_k_*_frac) and how
                often a pair's chosen answer is wrong (pairs/chosen_wrong_frac).
            reward_model: scores come from a reward model: adds its agreement with the verifier.

        Returns:
            summary() plus refine/, score/reward_mean, pairs/margin_mean and gen/turn_k_mean_tokens.
        """
        cands = list(self.candidates.values())
        score_of = {cid: s.value for cid, s in self.scores.items()}
        stats = turn_stats(chain_scores(cands, score_of), tolerance=tolerance)
        out = self.summary() | {f"refine/{k}": v for k, v in stats.items()}
        for k in ("improved_frac", "degraded_frac"):
            out[f"refine/{k}"] = mean([v for key, v in stats.items() if key.endswith(k)])
        direct = [p for p in self.pairs.values() if p.kind == "direct"]
        out["score/reward_mean"] = mean([v for v in score_of.values() if v is not None])
        out["pairs/margin_mean"] = mean(
            [
                p.chosen_score - p.rejected_score
                for p in direct
                if p.chosen_score is not None and p.rejected_score is not None
            ]
        )
        out |= {f"gen/{k}": v for k, v in turn_lengths(cands).items()}
        if verify is not None:
            correct = {c.id: float(verify(self.prompts[c.prompt_id], c.text)) for c in cands}
            out |= {f"refine/{k}": v for k, v in accuracy_stats(cands, correct).items()}
            judged = reward_vs_verifier(score_of, correct, [p.chosen_id for p in direct])
            out["pairs/chosen_wrong_frac"] = judged["chosen_wrong_frac"]
            if reward_model:
                out["score/rm_verifier_agreement"] = judged["rm_verifier_agreement"]
        return out

    def export(self, out: Path) -> None:
        """candidates.parquet (lineage, score, selection decision per candidate) and pairs.parquet."""
        role = {}
        for p in self.pairs.values():
            if p.kind == "direct":
                role[p.chosen_id], role[p.rejected_id] = "chosen", "rejected"
        rows = []
        for cid, c in self.candidates.items():
            s, d = self.scores.get(cid), self.decisions.get(c.prompt_id)
            row = to_row(c)
            row.update(
                score=s.value if s else None,
                score_invalid=s.invalid_reason if s else "unscored",
                selection=role.get(cid, "unused"),
                selection_reason=d["reason"] if d else "undecided",
            )
            rows.append(row)
        write_parquet(out / "candidates.parquet", rows)
        write_parquet(out / "pairs.parquet", [to_row(p) for p in sorted(self.pairs.values(), key=lambda p: p.id)])

    # -- internals ----------------------------------------------------------------------------
    def _claim(self, prompt_ids: list[str], worker: int) -> None:
        self.journal.append("claims", [{"prompt_id": p, "worker": worker} for p in prompt_ids])
        self.claims.update((p, worker) for p in prompt_ids)

    def _drop_claims(self, worker: int) -> int:
        held = [p for p, w in self.claims.items() if w == worker]
        self.journal.append("claims", [{"prompt_id": p, "worker": RELEASED} for p in held])
        for p in held:
            del self.claims[p]
        return sum(1 for p in held if p not in self.finished)

    def _try_decide(self, pid: str) -> None:
        if pid in self.decisions or pid not in self.finished:
            return
        cids = self.by_prompt.get(pid, [])
        if any(c not in self.scores for c in cids):
            return
        sel = self.selector(self.prompts[pid], self.scored(pid))
        pairs = [p for p in sel.pairs if p.id not in self.pairs]
        self.journal.append("pairs", [to_row(p) for p in pairs])
        decision = {
            "prompt_id": pid,
            "reason": sel.reason,
            "num_pairs": len(sel.pairs),
            "dropped_invalid": sel.dropped_invalid,
        }
        self.journal.append("decisions", [decision])
        self.pairs.update({p.id: p for p in pairs})
        self.decisions[pid] = decision

    def _apply_prompts(self, prompts: list[Prompt]) -> None:
        for p in prompts:
            self.prompts[p.id] = p
            self.by_prompt.setdefault(p.id, [])

    def _apply_candidates(self, cands: list[Candidate]) -> None:
        for c in cands:
            self.candidates[c.id] = c
            self.by_prompt.setdefault(c.prompt_id, []).append(c.id)
            self.unscored.append(c.id)

    def _apply_scores(self, scores: list[Score]) -> None:
        for s in scores:
            self.scores[s.candidate_id] = s
            self.inflight.discard(s.candidate_id)

    def _replay(self) -> None:
        self._apply_prompts([from_row(Prompt, r) for r in self.journal.read("prompts")])
        self._apply_candidates([from_row(Candidate, r) for r in self.journal.read("candidates")])
        self._apply_scores([from_row(Score, r) for r in self.journal.read("scores")])
        self.finished.update(r["prompt_id"] for r in self.journal.read("finished"))
        self.pairs.update({(p := from_row(PreferencePair, r)).id: p for r in self.journal.read("pairs")})
        self.decisions.update({r["prompt_id"]: r for r in self.journal.read("decisions")})
        for r in self.journal.read("claims"):  # in order: the last row of a prompt is its state
            if r["worker"] == RELEASED:
                self.claims.pop(r["prompt_id"], None)
            else:
                self.claims[r["prompt_id"]] = r["worker"]
        self.unscored = deque(c for c in self.unscored if c not in self.scores)
        for pid in list(self.finished):  # a crash between a score and its decision: decide now
            self._try_decide(pid)
