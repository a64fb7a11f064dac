"""Per-turn refinement metrics: quality at each turn and the share improved / unchanged / degraded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from evolve_ray.types import Candidate


def turn_stats(scores_by_prompt: Mapping[str, Sequence[float | None]], *, tolerance: float) -> dict[str, float]:
    """Mean score per turn and the turn-over-turn change shares of one chain per prompt.

    turn_{k}_score averages the prompts with a finite score at turn k. For k >= 1,
    turn_{k}_{improved,unchanged,degraded}_frac compare turn k with k-1 over the prompts with
    both finite; |diff| <= tolerance is unchanged. A key with no prompt to average is left out,
    so every value is a finite float.

    Args:
        scores_by_prompt: prompt id -> scores at turns 0..K (None or NaN where missing).
        tolerance: largest change that still counts as unchanged.

    Returns:
        Metric name -> value.
    """
    chains = [[math.nan if v is None else float(v) for v in s] for s in scores_by_prompt.values()]
    out: dict[str, float] = {}
    for k in range(max((len(s) for s in chains), default=0)):
        at_k = [s[k] for s in chains if k < len(s) and math.isfinite(s[k])]
        if at_k:
            out[f"turn_{k}_score"] = math.fsum(at_k) / len(at_k)
        if k == 0:
            continue
        diffs = [s[k] - s[k - 1] for s in chains if k < len(s) and math.isfinite(s[k] - s[k - 1])]
        if diffs:
            n = len(diffs)
            out[f"turn_{k}_improved_frac"] = sum(d > tolerance for d in diffs) / n
            out[f"turn_{k}_unchanged_frac"] = sum(abs(d) <= tolerance for d in diffs) / n
            out[f"turn_{k}_degraded_frac"] = sum(d < -tolerance for d in diffs) / n
    return out


def mean(xs: list[float]) -> float:
    """Arithmetic mean; NaN for no values (report rows drop non-finite values)."""
    return math.fsum(xs) / len(xs) if xs else math.nan


def chain_scores(cands: list[Candidate], score_of: Mapping[str, float | None]) -> dict[str, list[float | None]]:
    """Chain 0's scores by turn, per prompt (the chain that refinement statistics follow)."""
    out: dict[str, list[float | None]] = {}
    for c in sorted((c for c in cands if c.chain == 0), key=lambda c: (c.prompt_id, c.turn)):
        out.setdefault(c.prompt_id, []).append(score_of.get(c.id))
    return out


def turn_lengths(cands: list[Candidate]) -> dict[str, float]:
    """turn_{k}_mean_tokens: mean generated tokens of the responses at turn k (length drift);
    cut_frac: the share stopped at generation.max_new_tokens rather than at EOS."""
    by_turn: dict[int, list[float]] = {}
    for c in cands:
        by_turn.setdefault(c.turn, []).append(float(c.num_tokens))
    cut = [float(c.finish_reason == "length") for c in cands]
    return {f"turn_{k}_mean_tokens": mean(v) for k, v in sorted(by_turn.items())} | {"cut_frac": mean(cut)}


def accuracy_stats(cands: list[Candidate], correct: Mapping[str, float]) -> dict[str, float]:
    """Verifier accuracy of chain 0 per turn and its fixed / broken shares between turns
    (`turn_stats` on 1/0 correctness, so a mean score is an accuracy).

    Returns:
        turn_{k}_accuracy and acc_turn_{k}_{improved,unchanged,degraded}_frac (improved = a wrong
        answer fixed, degraded = a right answer broken).
    """
    acc = turn_stats(chain_scores(cands, correct), tolerance=0.5)
    return {(f"{k.removesuffix('_score')}_accuracy" if k.endswith("_score") else f"acc_{k}"): v for k, v in acc.items()}


def reward_vs_verifier(
    scores: dict[str, float | None], correct: dict[str, float], chosen_ids: list[str]
) -> dict[str, float]:
    """How far a reward model's judgement follows the exact verifier (reviewers' reward-bias check).

    Args:
        scores: candidate id -> the scorer's value (a reward model's raw logit: > 0 reads "good").
        correct: candidate id -> 1.0 / 0.0 from the task's verifier.
        chosen_ids: the chosen candidate of each direct pair.

    Returns:
        rm_verifier_agreement: share of scored candidates where (score > 0) == correct;
        chosen_wrong_frac: share of pairs whose chosen answer the verifier calls wrong.
    """
    judged = [(s > 0) == (correct[c] > 0.5) for c, s in scores.items() if s is not None and c in correct]
    chosen = [1.0 - correct[c] for c in chosen_ids if c in correct]
    return {"rm_verifier_agreement": mean([float(j) for j in judged]), "chosen_wrong_frac": mean(chosen)}
