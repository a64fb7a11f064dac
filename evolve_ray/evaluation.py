"""Per-turn evaluation on held-out prompts: greedy generation, scores and (if verifiable)
accuracy after every refinement turn, with improved / unchanged / degraded shares.
Used by the round loop's evaluate stage and by `evolve-ray eval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from evolve_ray.core.stats import accuracy_stats, chain_scores, turn_lengths, turn_stats
from evolve_ray.rundir import write_parquet
from evolve_ray.types import Candidate, Prompt, Score, to_row

log = logging.getLogger(__name__)


def evaluate_prompts(
    generators: list[Any],
    scorers: list[Any],
    task: Any,
    prompts: list[Prompt],
    *,
    round_: int,
    strategy: str,
    turns: int,
    tolerance: float,
    out_file: Path,
) -> dict[str, Any]:
    """Generate greedily on `prompts`, score every turn, write `out_file` (parquet); metrics back."""
    by_id = {p.id: p for p in prompts}
    shards = [prompts[i :: len(generators)] for i in range(len(generators))]
    refs = [g.generate_eval.remote(sh, round_, strategy, turns) for g, sh in zip(generators, shards, strict=True) if sh]
    cands: list[Candidate] = [c for part in ray.get(refs) for c in part]
    batch = [(c, by_id[c.prompt_id]) for c in cands]
    parts = [batch[i :: len(scorers)] for i in range(len(scorers))]
    scores: list[Score] = [
        x for part in ray.get([sc.score.remote(p) for sc, p in zip(scorers, parts, strict=True)]) for x in part
    ]
    score_of = {x.candidate_id: x.value for x in scores}
    correct = {c.id: float(task.verify(by_id[c.prompt_id], c.text)) for c in cands} if task.verifiable else {}
    write_parquet(
        out_file,
        [
            to_row(c)
            | {"question": by_id[c.prompt_id].question, "score": score_of.get(c.id), "correct": correct.get(c.id)}
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
    out["eval/direct_score"] = out.get("eval/turn_0_score", float("nan"))
    out["eval/prompts"] = float(len(prompts))
    return out
