"""Evaluation on held-out prompts under an inference strategy.

Per turn (chain 0): scores and (if verifiable) accuracy after every refinement turn, with
improved / unchanged / degraded shares. Per strategy: the final answer that `pick_final` chooses
for each prompt, its score and accuracy, and its cost: the tokens generated and the prompt tokens
read per prompt (a refinement turn reads the question and the previous answer again).

Best-of-N (parallel, parallel_chain) is picked by a reward model, never by the verifier: under
scoring.kind=verifier the verifier grades the pick and the scorers' reward model (model.reward,
or the built-in one on the built-in task) makes it. What a pick by the answer key would score is
reported beside it under its own name, pass@N (eval/final_oracle_accuracy). Vote takes the
majority answer, direct and chain the last turn. Each strategy runs with the N, K and temperature
of a strategy_study.StrategyRun, recorded with its figures. Used by the round loop's evaluate
stage and by `evolve-ray eval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray

from evolve_ray.config import Config, best_of_n_unpicked
from evolve_ray.core.stats import accuracy_stats, chain_scores, turn_lengths, turn_stats
from evolve_ray.core.strategies import BEST_OF_N, turn_costs
from evolve_ray.errors import UserError
from evolve_ray.reporting.strategy_study import StrategyRun, picked_figures, plan_comparison
from evolve_ray.rundir import write_parquet
from evolve_ray.types import Candidate, Prompt, Score, from_row, to_row

log = logging.getLogger(__name__)


def check_strategies(cfg: Config, strategies: list[str], task: Any) -> None:
    """Refuse, before any generation, a strategy the task or the models cannot support: vote needs
    answers to count, best-of-N a reward model to pick with."""
    if "vote" in strategies and not task.verifiable:
        raise UserError(
            f"strategy vote needs a task with checkable answers (it counts final answers); {task.name} has none"
        )
    if (why := best_of_n_unpicked(cfg, strategies)) is not None:
        raise UserError(why)


def _scores(scorers: list[Any], batch: list[tuple[Candidate, Prompt]], method: str) -> dict[str, float | None]:
    """candidate id -> score, `method` (score | pick_scores) spread over the scorers."""
    parts = [batch[i :: len(scorers)] for i in range(len(scorers))]
    refs = [getattr(sc, method).remote(p) for sc, p in zip(scorers, parts, strict=True) if p]
    found: list[Score] = [x for part in ray.get(refs) for x in part]
    return {x.candidate_id: x.value for x in found}


def evaluate_prompts(
    generators: list[Any],
    scorers: list[Any],
    *,
    task: Any,
    prompts: list[Prompt],
    round_: int,
    run: StrategyRun,
    reward_scores: bool,
    tolerance: float,
    out_file: Path,
) -> dict[str, Any]:
    """Run one strategy on `prompts`, score every candidate, write `out_file` (parquet); metrics back.

    Args:
        run: the strategy with its N, K and temperature.
        reward_scores: the scorers' scores are a reward model's (scoring.kind=reward_model), so they
            pick best-of-N as they are; else (the verifier's) the scorers' reward model scores the finals.
        tolerance: score changes within it count as unchanged (run.unchanged_tolerance).
    """
    by_id = {p.id: p for p in prompts}
    shards = [prompts[i :: len(generators)] for i in range(len(generators))]
    plan = {
        "round_": round_,
        "strategy": run.strategy,
        "num_samples": run.num_samples,
        "turns": run.turns,
        "temperature": run.temperature,
    }
    refs = [g.generate_eval.remote(sh, **plan) for g, sh in zip(generators, shards, strict=True) if sh]
    cands: list[Candidate] = [c for part in ray.get(refs) for c in part]
    score_of = _scores(scorers, [(c, by_id[c.prompt_id]) for c in cands], "score")
    correct = {c.id: task.verify(by_id[c.prompt_id], c.text) for c in cands} if task.verifiable else {}
    pick_of: dict[str, float | None] = {}
    if run.strategy in BEST_OF_N:
        pick_of = score_of if reward_scores else _pick_scores(scorers, cands, by_id)
    picks, finals = picked_figures(
        run, cands, scores=score_of, pick_scores=pick_of, correct=correct, extract_answer=task.extract_answer
    )
    picked = {c.id for c in picks.values()}
    write_parquet(
        out_file,
        [
            to_row(c)
            | {
                "question": by_id[c.prompt_id].question,
                "score": score_of.get(c.id),
                "pick_score": pick_of.get(c.id),
                "correct": correct.get(c.id),
                "final": c.id in picked,
                "temperature": run.temperature,
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
    out.update({f"eval/{k}": v for k, v in finals.items()})
    out["eval/direct_score"] = out.get("eval/turn_0_score", float("nan"))
    out["eval/prompts"] = float(len(prompts))
    return out


def _pick_scores(scorers: list[Any], cands: list[Candidate], by_id: dict[str, Prompt]) -> dict[str, float | None]:
    """The reward model's scores of the chain finals (all a best-of-N pick looks at)."""
    last: dict[tuple[str, int], Candidate] = {}
    for c in cands:
        if (c.prompt_id, c.chain) not in last or c.turn > last[c.prompt_id, c.chain].turn:
            last[c.prompt_id, c.chain] = c
    return _scores(scorers, [(c, by_id[c.prompt_id]) for c in last.values()], "pick_scores")


# `strategy/<name>_<quantity>` (report.json) <- the eval/ key it is read from.
STRATEGY_QUANTITIES = {
    "accuracy": "eval/final_accuracy",
    "oracle_accuracy": "eval/final_oracle_accuracy",
    "score": "eval/final_score",
    "tokens_per_prompt": "eval/tokens_per_prompt",
    "prompt_tokens_per_prompt": "eval/prompt_tokens_per_prompt",
}
BUDGET_KEY = "strategy/budget_tokens"


def strategy_key(strategy: str, quantity: str) -> str:
    """The report key of one strategy's quantity, e.g. strategy/vote_accuracy."""
    return f"strategy/{strategy}_{quantity}"


def run_figures(run: StrategyRun) -> dict[str, float]:
    """What a strategy ran with, as report keys: strategy/<name>_num_samples, _turns, _temperature."""
    return {
        strategy_key(run.strategy, "num_samples"): float(run.num_samples),
        strategy_key(run.strategy, "turns"): float(run.turns),
        strategy_key(run.strategy, "temperature"): run.temperature,
    }


def evaluate_strategies(
    generators: list[Any],
    scorers: list[Any],
    *,
    task: Any,
    prompts: list[Prompt],
    cfg: Config,
    round_: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Each of `run.eval_strategies` on the same prompts, with the N, K and temperature of
    strategy_study.plan_comparison (a budget's N and K are planned with the turn costs of the
    round's greedy chain, out_dir/eval.parquet); candidates to out_dir/eval_<strategy>.parquet,
    and `strategy/<name>_<quantity>` metrics back."""
    costs = None
    if cfg.run.eval_budget_tokens > 0:
        costs = turn_costs([from_row(Candidate, row) for row in pq.read_table(out_dir / "eval.parquet").to_pylist()])
        log.info(
            "budget %g tokens per prompt: a first answer costs %.1f, a refinement turn %.1f",
            cfg.run.eval_budget_tokens,
            *costs,
        )
    out: dict[str, Any] = {BUDGET_KEY: cfg.run.eval_budget_tokens} if costs else {}
    for run in plan_comparison(cfg, costs):
        m = evaluate_prompts(
            generators,
            scorers,
            task=task,
            prompts=prompts,
            round_=round_,
            run=run,
            reward_scores=cfg.scoring.kind == "reward_model",
            tolerance=cfg.run.unchanged_tolerance,
            out_file=out_dir / f"eval_{run.strategy}.parquet",
        )
        out |= run_figures(run)
        out |= {strategy_key(run.strategy, q): m[key] for q, key in STRATEGY_QUANTITIES.items() if key in m}
    return out
