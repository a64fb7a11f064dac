"""The inference-strategy comparison in report.md: a table and a plot of accuracy against cost.

Rows carry `strategy/<name>_<quantity>` keys (evaluation.strategy_key) for the rounds where
run.eval_strategies ran. Pure: matplotlib (Agg), no ray.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from evolve_ray.core.strategies import STRATEGIES
from evolve_ray.rundir import atomic_write

# Beside plots/*.png, not among them: report.md's generic plot list globs plots/*.png only.
PLOT = "plots/strategies/accuracy_vs_tokens.png"


def final_line(strategy: str, metrics: dict[str, Any]) -> str:
    """One line for `evolve-ray eval`: the strategy's final accuracy, score and tokens per prompt."""
    parts = [f"strategy {strategy}:"]
    for key, label in (
        ("final_accuracy", "accuracy"),
        ("final_score", "score"),
        ("tokens_per_prompt", "tokens/prompt"),
    ):
        value = metrics.get(f"eval/{key}")
        parts.append(f"{label}={value:.3f}" if isinstance(value, float) and math.isfinite(value) else f"{label}=-")
    return " ".join(parts)


def _results(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """strategy -> {accuracy, score, tokens_per_prompt} present in one report row."""
    out: dict[str, dict[str, float]] = {}
    for name in STRATEGIES:
        for q in ("accuracy", "score", "tokens_per_prompt"):
            if (v := row.get(f"strategy/{name}_{q}")) is not None:
                out.setdefault(name, {})[q] = v
    return out


def strategy_blocks(run: Path, rows: list[dict[str, Any]]) -> list[tuple]:
    """report.md's strategy section as report blocks (none when no round compared strategies);
    writes its plot."""
    compared = [(r["round"], res) for r in rows if (res := _results(r))]
    if not compared:
        return []
    cells = [
        ["start" if round_ == -1 else str(round_), name]
        + [_fmt(m.get(q)) for q in ("accuracy", "score", "tokens_per_prompt")]
        for round_, res in compared
        for name, m in res.items()
    ]
    _plot(run, *compared[-1])
    return [
        ("h", 2, "Inference strategies"),
        (
            "p",
            "Final answers picked per strategy: best-of-N by the scorer (parallel, parallel_chain), the majority "
            "answer (vote), the last turn (direct, chain). Tokens: every generated token per prompt.",
        ),
        ("table", ["round", "strategy", "accuracy", "score", "tokens/prompt"], cells),
        ("img", PLOT.removeprefix("plots/"), "accuracy against tokens per prompt"),
    ]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _plot(run: Path, round_: int, res: dict[str, dict[str, float]]) -> None:
    os.environ.setdefault("MPLCONFIGDIR", str(run / ".cache" / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantity = "accuracy" if any("accuracy" in m for m in res.values()) else "score"
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, m in res.items():
        if quantity in m and "tokens_per_prompt" in m:
            ax.plot(m["tokens_per_prompt"], m[quantity], "o")
            ax.annotate(
                name, (m["tokens_per_prompt"], m[quantity]), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )
    ax.set(xlabel="generated tokens per prompt", ylabel=quantity, title=f"strategies after round {round_}")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write(run / PLOT, png.getvalue())
