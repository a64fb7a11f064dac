"""What each strategy of a comparison runs with: N, K and temperature, as configured or matched
to a token budget (run.eval_budget_tokens). Every figure of the comparison is recorded with them.

Temperature decides the comparison (docs/method.md): one chain is greedy unless told otherwise,
several chains sample at generation.temperature (N greedy chains would be N copies of one), and
run.eval_temperatures sets either per strategy. Pure: no ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evolve_ray.config import Config
from evolve_ray.core.strategies import BEST_OF_N, chain_grid, final_metrics, match_budget, pick_finals
from evolve_ray.types import Candidate, ScoredCandidate

# Strategies whose grid has N chains, and those whose chains refine K turns.
SAMPLES_N = ("parallel", "parallel_chain", "vote")
REFINES_K = ("chain", "parallel_chain", "vote")


@dataclass(frozen=True)
class StrategyRun:
    """One strategy as it runs: N chains, K refinement turns each, sampled at `temperature`."""

    strategy: str
    num_samples: int
    turns: int
    temperature: float


def default_temperature(strategy: str, num_samples: int, sampling: float) -> float:
    """Greedy for one chain; `sampling` (generation.temperature) when a strategy runs several."""
    chains, _ = chain_grid(strategy, num_samples=num_samples, turns=0)  # type: ignore[arg-type]
    return sampling if chains > 1 else 0.0


def grid_of(strategy: str, num_samples: int, turns: int) -> tuple[int, int]:
    """(N, K) as the strategy uses them: N only where it samples several chains, K only where it refines."""
    return (num_samples if strategy in SAMPLES_N else 1, turns if strategy in REFINES_K else 0)


def plan_comparison(cfg: Config, costs: tuple[float, float] | None = None) -> list[StrategyRun]:
    """run.eval_strategies with their N, K and temperature.

    Args:
        cfg: the run's config.
        costs: (first answer, refinement turn) tokens processed (core.strategies.turn_costs), needed
            when run.eval_budget_tokens is set: each strategy then gets the (N, K) closest to it.

    Returns:
        One StrategyRun per strategy, in the configured order.
    """
    r = cfg.run
    out = []
    for name in r.eval_strategies:
        if r.eval_budget_tokens > 0:
            if costs is None:
                raise ValueError("plan_comparison: a budget needs the measured turn costs")
            n, k = match_budget(
                name,  # type: ignore[arg-type]  # validated against STRATEGIES
                r.eval_budget_tokens,
                first=costs[0],
                refine=costs[1],
                preferred_turns=r.eval_turns,
            )
        else:
            n, k = grid_of(name, r.eval_num_samples, r.eval_turns)
        if name in r.eval_temperatures:
            temperature = r.eval_temperatures[name]
        else:
            temperature = default_temperature(name, n, cfg.generation.temperature)
        out.append(StrategyRun(name, n, k, temperature))
    return out


def picked_figures(
    run: StrategyRun,
    cands: list[Candidate],
    *,
    scores: dict[str, float | None],
    pick_scores: dict[str, float | None],
    correct: dict[str, bool],
    extract_answer: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, Candidate], dict[str, float]]:
    """Each prompt's final answer under `run`, and what the picks are worth and cost.

    Best-of-N is picked by `pick_scores` (a reward model's), never by `scores` when those are the
    verifier's: a pick by the answer key is pass@N, reported as final_oracle_accuracy beside it.

    Args:
        run: the strategy with its N, K and temperature.
        cands: every candidate generated for the prompts.
        scores: candidate id -> the configured scorer's score (the reward model's or the verifier's).
        pick_scores: candidate id -> the reward model's score of the chain finals (best-of-N only).
        correct: candidate id -> the verifier's verdict ({} when the task has none).
        extract_answer: the task's answer extractor (vote).

    Returns:
        (prompt id -> picked candidate, core.strategies.final_metrics of the picks).
    """
    scored = [ScoredCandidate(c, scores.get(c.id)) for c in cands]
    by = pick_scores if run.strategy in BEST_OF_N else scores
    to_pick = [ScoredCandidate(c, by.get(c.id)) for c in cands]
    picks = pick_finals(run.strategy, to_pick, extract_answer=extract_answer)  # type: ignore[arg-type]
    if not picks:
        return picks, {}
    chains, _ = chain_grid(run.strategy, num_samples=run.num_samples, turns=run.turns)  # type: ignore[arg-type]
    return picks, final_metrics(scored, picks, correct or None, oracle=chains > 1)
