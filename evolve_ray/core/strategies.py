"""Inference strategies as pure planners: what to generate next, which candidate is final, and
what it cost.

A strategy is a grid of chains x turns. Turn 0 of a chain answers x directly; turn k+1 refines
turn k under t(x, y_k), so it is requested only once turn k exists. Planning from the
candidates that exist lets a half-done prompt resume where it stopped.

Cost is counted in tokens processed per prompt: the prompt tokens every request reads (a
refinement turn reads the question and the previous answer again) plus the tokens it generates.
A token budget picks each strategy's N and K (`match_budget`) so that strategies compare at
matched compute.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from evolve_ray.types import Candidate, ScoredCandidate, candidate_id

Strategy = Literal["direct", "parallel", "chain", "parallel_chain", "vote"]
STRATEGIES: tuple[str, ...] = ("direct", "parallel", "chain", "parallel_chain", "vote")
# Picked by a score: the best of N chain finals. Evaluation picks with a reward model, never with the
# verifier (that is pass@N, the answer key's pick, reported in its own column).
BEST_OF_N: tuple[str, ...] = ("parallel", "parallel_chain")
# The grid a token budget chooses N and K from: the bounds only keep the search finite (and a run's
# evaluation bounded); a budget beyond them gets the largest point.
BUDGET_MAX_SAMPLES = 32
BUDGET_MAX_TURNS = 8


@dataclass(frozen=True)
class GenRequest:
    """One response to generate: turn `turn` of chain `chain`, refining `parent_id` when turn > 0."""

    prompt_id: str
    chain: int
    turn: int
    parent_id: str | None


def chain_grid(strategy: Strategy, *, num_samples: int, turns: int) -> tuple[int, int]:
    """(number of chains, turns per chain including turn 0) of a strategy.

    Args:
        strategy: one of STRATEGIES.
        num_samples: N, the number of chains (parallel strategies).
        turns: K, refinement turns after the first answer (chain strategies).

    Returns:
        (chains, turns per chain).
    """
    grids = {
        "direct": (1, 1),
        "parallel": (num_samples, 1),
        "chain": (1, turns + 1),
        "parallel_chain": (num_samples, turns + 1),
        "vote": (num_samples, turns + 1),
    }
    if strategy not in grids:
        raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    return grids[strategy]


def plan_next(
    strategy: Strategy, *, num_samples: int, turns: int, existing: list[Candidate], prompt_id: str
) -> list[GenRequest]:
    """The next wave of generations for one prompt: per unfinished chain, its first missing turn.

    Args:
        strategy: one of STRATEGIES.
        num_samples: N chains (parallel strategies).
        turns: K refinement turns (chain strategies).
        existing: candidates already generated for this prompt (any order).
        prompt_id: the prompt planned for.

    Returns:
        Requests ordered by chain; empty once the prompt is complete.
    """
    others = {c.prompt_id for c in existing} - {prompt_id}
    if others:
        raise ValueError(f"plan_next for {prompt_id!r} got candidates of other prompts: {sorted(others)}")
    chains, per_chain = chain_grid(strategy, num_samples=num_samples, turns=turns)
    have = {(c.chain, c.turn) for c in existing}
    requests = []
    for chain in range(chains):
        turn = next((t for t in range(per_chain) if (chain, t) not in have), None)
        if turn is None:
            continue
        parent = candidate_id(prompt_id, chain, turn - 1) if turn > 0 else None
        requests.append(GenRequest(prompt_id, chain, turn, parent))
    return requests


def _finals(scored: list[ScoredCandidate]) -> list[ScoredCandidate]:
    """The last turn of each chain, ordered by chain."""
    last: dict[int, ScoredCandidate] = {}
    for sc in scored:
        c = sc.candidate
        if c.chain not in last or c.turn > last[c.chain].candidate.turn:
            last[c.chain] = sc
    return [last[k] for k in sorted(last)]


def pick_final(
    strategy: Strategy,
    candidates_with_scores: list[ScoredCandidate],
    *,
    extract_answer: Callable[[str], str | None] | None = None,
) -> Candidate:
    """The strategy's answer for one prompt.

    direct / chain: the last turn of chain 0. parallel / parallel_chain: the chain final with the
    best valid score (ties and all-invalid: lowest chain). vote: the most common final answer
    (ties: the answer first given by the lowest chain; finals whose answer is None do not vote),
    returned as its lowest-chain candidate.

    Args:
        strategy: one of STRATEGIES.
        candidates_with_scores: the prompt's candidates; scores may be None where unused.
        extract_answer: maps a response to its answer (vote); default the stripped text.

    Returns:
        The chosen candidate.
    """
    chain_grid(strategy, num_samples=1, turns=0)  # validates the name
    finals = _finals(candidates_with_scores)
    if not finals:
        raise ValueError("pick_final: no candidates")
    if strategy in ("direct", "chain"):
        if finals[0].candidate.chain != 0:
            raise ValueError("pick_final: chain 0 has no candidates")
        return finals[0].candidate
    if strategy in ("parallel", "parallel_chain"):
        valid = [(sc.score, sc.candidate) for sc in finals if sc.score is not None and math.isfinite(sc.score)]
        if not valid:
            return finals[0].candidate
        best = max(score for score, _ in valid)
        return next(c for score, c in valid if score == best)  # the lowest chain among equals
    extract = extract_answer or str.strip
    answers = [(extract(sc.candidate.text), sc.candidate) for sc in finals]
    votes = Counter(a for a, _ in answers if a is not None)
    if not votes:
        return finals[0].candidate
    top = max(votes.values())
    # answers are in chain order, so the first answer reaching the top count is the tie-break winner.
    return next(c for a, c in answers if a is not None and votes[a] == top)


def pick_finals(
    strategy: Strategy,
    scored: list[ScoredCandidate],
    *,
    extract_answer: Callable[[str], str | None] | None = None,
) -> dict[str, Candidate]:
    """`pick_final` for every prompt present in `scored`: prompt id -> the strategy's answer."""
    by_prompt: dict[str, list[ScoredCandidate]] = {}
    for sc in scored:
        by_prompt.setdefault(sc.candidate.prompt_id, []).append(sc)
    return {pid: pick_final(strategy, scs, extract_answer=extract_answer) for pid, scs in by_prompt.items()}


def final_metrics(
    scored: list[ScoredCandidate],
    picks: dict[str, Candidate],
    correct: dict[str, bool] | None,
    *,
    oracle: bool = False,
) -> dict[str, float]:
    """What a strategy's picked answers are worth, and what they cost.

    Args:
        scored: every candidate generated for the prompts (all chains, all turns), with scores.
        picks: prompt id -> the picked final (from `pick_finals`).
        correct: candidate id -> verifier verdict (verifiable tasks), else None.
        oracle: also report pass@N (with `correct`): the share of prompts where any chain's final
            is right, which is what a pick by the answer key would score. Not a strategy's figure.

    Returns:
        final_score (mean valid score of the picks), tokens_per_prompt (every generated token, all
        chains and turns, over the prompts), prompt_tokens_per_prompt (every prompt token those
        requests read) and, with `correct`, final_accuracy (and final_oracle_accuracy).
    """
    if not picks:
        raise ValueError("final_metrics: no prompts")
    score_of = {sc.candidate.id: sc.score for sc in scored}
    valid = [v for c in picks.values() if (v := score_of.get(c.id)) is not None and math.isfinite(v)]
    out = {
        "final_score": sum(valid) / len(valid) if valid else math.nan,
        "tokens_per_prompt": sum(sc.candidate.num_tokens for sc in scored) / len(picks),
        "prompt_tokens_per_prompt": sum(sc.candidate.prompt_tokens for sc in scored) / len(picks),
    }
    if correct is not None:
        out["final_accuracy"] = sum(correct[c.id] for c in picks.values()) / len(picks)
        if oracle:
            solved = {sc.candidate.prompt_id for sc in _finals_by_prompt(scored) if correct[sc.candidate.id]}
            out["final_oracle_accuracy"] = len(solved & set(picks)) / len(picks)
    return out


def _finals_by_prompt(scored: list[ScoredCandidate]) -> list[ScoredCandidate]:
    """The last turn of every chain of every prompt."""
    by_prompt: dict[str, list[ScoredCandidate]] = {}
    for sc in scored:
        by_prompt.setdefault(sc.candidate.prompt_id, []).append(sc)
    return [f for scs in by_prompt.values() for f in _finals(scs)]


# ----------------------------------------------------------------------------------------------
# Matched compute


def turn_costs(cands: list[Candidate]) -> tuple[float, float]:
    """Mean tokens processed (prompt + generated) by a first answer and by a refinement turn.

    Args:
        cands: candidates of at least one chain with turns >= 1 (e.g. the round's greedy chain).

    Returns:
        (first answer's cost, refinement turn's cost) in tokens.
    """
    first = [c.prompt_tokens + c.num_tokens for c in cands if c.turn == 0]
    refine = [c.prompt_tokens + c.num_tokens for c in cands if c.turn > 0]
    if not first or not refine:
        raise ValueError("turn_costs: needs first answers and refinement turns")
    return sum(first) / len(first), sum(refine) / len(refine)


def estimated_cost(strategy: Strategy, num_samples: int, turns: int, *, first: float, refine: float) -> float:
    """Tokens processed per prompt of a strategy's grid: chains x (first answer + K refinements)."""
    chains, per_chain = chain_grid(strategy, num_samples=num_samples, turns=turns)
    return chains * (first + (per_chain - 1) * refine)


def budget_grid(strategy: Strategy) -> list[tuple[int, int]]:
    """The (N, K) points a budget may give a strategy, each still that strategy: parallel ones
    sample N >= 2, chain ones refine K >= 1; direct has its one point."""
    ns = range(2, BUDGET_MAX_SAMPLES + 1)
    ks = range(1, BUDGET_MAX_TURNS + 1)
    grids = {
        "direct": [(1, 0)],
        "parallel": [(n, 0) for n in ns],
        "chain": [(1, k) for k in ks],
        "parallel_chain": [(n, k) for n in ns for k in ks],
        "vote": [(n, k) for n in ns for k in ks],
    }
    return grids[strategy]


def match_budget(
    strategy: Strategy, budget: float, *, first: float, refine: float, preferred_turns: int
) -> tuple[int, int]:
    """The (N, K) of `budget_grid` whose estimated cost is closest to `budget` tokens per prompt.

    Ties (several grid points as close) go to the K nearest `preferred_turns`, then to fewer chains.

    Args:
        strategy: one of STRATEGIES.
        budget: tokens processed per prompt (prompt + generated).
        first, refine: `turn_costs` of a first answer and of a refinement turn.
        preferred_turns: K when several points fit equally (run.eval_turns).

    Returns:
        (N, K).
    """

    def key(point: tuple[int, int]) -> tuple[float, int, int]:
        n, k = point
        gap = abs(estimated_cost(strategy, n, k, first=first, refine=refine) - budget)
        return (round(gap, 9), abs(k - preferred_turns), n)

    return min(budget_grid(strategy), key=key)
