"""Evaluation on held-out prompts under an inference strategy.

Per turn (chain 0): scores and (if verifiable) accuracy after every refinement turn, with
improved / unchanged / degraded shares. Per strategy: the final answer that `pick_final` chooses
for each prompt (best-of-N by the scorer for parallel / parallel_chain, the majority answer for
vote), its score and accuracy, and the tokens generated per prompt (its cost). One chain is
generated greedily; several chains are sampled at `generation.temperature` (N greedy chains
would be N copies of one). Used by the round loop's evaluate stage and by `evolve-ray eval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from evolve_ray.config import Config
from evolve_ray.core.stats import accuracy_stats, chain_scores, turn_lengths, turn_stats
from evolve_ray.core.strategies import chain_grid, final_metrics, pick_finals
from evolve_ray.errors import UserError
from evolve_ray.rundir import write_parquet
from evolve_ray.types import Candidate, Prompt, Score, ScoredCandidate, to_row

log = logging.getLogger(__name__)


def check_strategies(strategies: list[str], task: Any) -> None:
    """Refuse, before any generation, a strategy the task cannot support (vote needs answers to count)."""
    if "vote" in strategies and not task.verifiable:
        raise UserError(
            f"strategy vote needs a task with checkable answers (it counts final answers); {task.name} has none"
        )


def eval_temperature(strategy: str, num_samples: int, temperature: float) -> float:
    """Greedy for one chain; the sampling temperature when a strategy runs several."""
    chains, _ = chain_grid(strategy, num_samples=num_samples, turns=0)  # type: ignore[arg-type]
    return temperature if chains > 1 else 0.0


def evaluate_prompts(
    generators: list[Any],
    scorers: list[Any],
    task: Any,
    prompts: list[Prompt],
    *,
    round_: int,
    strategy: str,
    num_samples: int = 1,
    turns: int,
    temperature: float = 0.0,
    tolerance: float,
    out_file: Path,
) -> dict[str, Any]:
    """Run `strategy` on `prompts`, score every candidate, write `out_file` (parquet); metrics back."""
    check_strategies([strategy], task)
    by_id = {p.id: p for p in prompts}
    shards = [prompts[i :: len(generators)] for i in range(len(generators))]
    plan = (round_, strategy, num_samples, turns, temperature)
    refs = [g.generate_eval.remote(sh, *plan) for g, sh in zip(generators, shards, strict=True) if sh]
    cands: list[Candidate] = [c for part in ray.get(refs) for c in part]
    batch = [(c, by_id[c.prompt_id]) for c in cands]
    parts = [batch[i :: len(scorers)] for i in range(len(scorers))]
    scores: list[Score] = [
        x for part in ray.get([sc.score.remote(p) for sc, p in zip(scorers, parts, strict=True)]) for x in part
    ]
    score_of = {x.candidate_id: x.value for x in scores}
    correct = {c.id: task.verify(by_id[c.prompt_id], c.text) for c in cands} if task.verifiable else {}
    scored = [ScoredCandidate(c, score_of.get(c.id)) for c in cands]
    picks = pick_finals(strategy, scored, extract_answer=task.extract_answer)  # type: ignore[arg-type]
    picked = {c.id for c in picks.values()}
    write_parquet(
        out_file,
        [
            to_row(c)
            | {
                "question": by_id[c.prompt_id].question,
                "score": score_of.get(c.id),
                "correct": correct.get(c.id),
                "final": c.id in picked,
            }
            for c in cands
        ],
    )
    out: dict[str, Any] = {
        f"eval/{k}": v for k, v in turn_stats(chain_scores(cands, score_of), tolerance=tolerance).items()
    }
    if correct:
        out.update({f"eval/{k}": v for k, v in accuracy_stats(cands, correct).items()})
    out.update({f"eval/{k}": v for k, v in turn_lengths(cands).items()})
    out["eval/tokens"] = float(sum(c.num_tokens for c in cands))
    if picks:
        out.update({f"eval/{k}": v for k, v in final_metrics(scored, picks, correct or None).items()})
    out["eval/direct_score"] = out.get("eval/turn_0_score", float("nan"))
    out["eval/prompts"] = float(len(prompts))
    return out


STRATEGY_QUANTITIES = ("accuracy", "score", "tokens_per_prompt")


def strategy_key(strategy: str, quantity: str) -> str:
    """The report key of one strategy's quantity, e.g. strategy/vote_accuracy."""
    return f"strategy/{strategy}_{quantity}"


def evaluate_strategies(
    generators: list[Any],
    scorers: list[Any],
    task: Any,
    prompts: list[Prompt],
    cfg: Config,
    *,
    round_: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Each of `run.eval_strategies` on the same prompts (N = run.eval_num_samples, K = run.eval_turns);
    candidates to out_dir/eval_<strategy>.parquet, and `strategy/<name>_<quantity>` metrics back."""
    out: dict[str, Any] = {}
    for name in cfg.run.eval_strategies:
        m = evaluate_prompts(
            generators,
            scorers,
            task,
            prompts,
            round_=round_,
            strategy=name,
            num_samples=cfg.run.eval_num_samples,
            turns=cfg.run.eval_turns,
            temperature=eval_temperature(name, cfg.run.eval_num_samples, cfg.generation.temperature),
            tolerance=cfg.selection.tie_tolerance,
            out_file=out_dir / f"eval_{name}.parquet",
        )
        for q in STRATEGY_QUANTITIES:
            key = "eval/tokens_per_prompt" if q == "tokens_per_prompt" else f"eval/final_{q}"
            if key in m:
                out[strategy_key(name, q)] = m[key]
    return out
