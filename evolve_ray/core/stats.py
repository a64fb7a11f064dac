"""Per-turn refinement metrics: quality at each turn and the share improved / unchanged / degraded."""

from __future__ import annotations

import math


def turn_stats(scores_by_prompt: dict[str, list[float | None]], *, tolerance: float) -> dict[str, float]:
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
