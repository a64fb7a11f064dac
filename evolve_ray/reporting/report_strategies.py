"""The inference-strategy comparison in report.md: a table and a plot of accuracy against cost.

Rows carry `strategy/<name>_<quantity>` keys (evaluation.strategy_key) for the rounds where
run.eval_strategies ran: what each strategy ran with (N, K, temperature), what its picked answers
are worth (accuracy, score; pass@N, the answer key's pick, in its own column) and what they cost
(generated and prompt tokens per prompt), and `strategy/budget_tokens` when N and K were matched to
a budget. Pure: matplotlib (Agg), no ray.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from evolve_ray.core.strategies import BEST_OF_N, STRATEGIES
from evolve_ray.rundir import atomic_write

# Beside plots/*.png, not among them: report.md's generic plot list globs plots/*.png only.
PLOT = "plots/strategies/accuracy_vs_tokens.png"
QUANTITIES = (
    "num_samples",
    "turns",
    "temperature",
    "accuracy",
    "oracle_accuracy",
    "score",
    "tokens_per_prompt",
    "prompt_tokens_per_prompt",
)
BUDGET = "strategy/budget_tokens"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def final_line(strategy: str, metrics: dict[str, Any]) -> str:
    """One line for `evolve-ray eval`: what the strategy ran with, its picked answers' accuracy
    and score, pass@N beside a best-of-N, and its cost."""
    grid = f"N={metrics['num_samples']} K={metrics['turns']} temperature={metrics['temperature']:g}"
    parts = [f"strategy {strategy} ({grid}):", f"accuracy={_num(metrics.get('eval/final_accuracy'))}"]
    if strategy in BEST_OF_N:
        parts[-1] += " (best-of-N: picked by the reward model)"
    if "eval/final_oracle_accuracy" in metrics:
        n = metrics["num_samples"]
        parts.append(f"pass@{n} (oracle: the answer key picks)={_num(metrics['eval/final_oracle_accuracy'])}")
    parts += [
        f"score={_num(metrics.get('eval/final_score'))}",
        f"generated tokens/prompt={_num(metrics.get('eval/tokens_per_prompt'), 1)}",
        f"prompt tokens/prompt={_num(metrics.get('eval/prompt_tokens_per_prompt'), 1)}",
    ]
    return " ".join(parts)


def _results(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """strategy -> {quantity: value} present in one report row."""
    out: dict[str, dict[str, float]] = {}
    for name in STRATEGIES:
        for q in QUANTITIES:
            if (v := row.get(f"strategy/{name}_{q}")) is not None:
                out.setdefault(name, {})[q] = v
    return out


def _processed(m: dict[str, float]) -> float | None:
    """Tokens processed per prompt: prompt tokens read plus tokens generated (None when unknown)."""
    if "tokens_per_prompt" not in m or "prompt_tokens_per_prompt" not in m:
        return None
    return m["tokens_per_prompt"] + m["prompt_tokens_per_prompt"]


def strategy_blocks(run: Path, rows: list[dict[str, Any]]) -> list[tuple]:
    """report.md's strategy section as report blocks (none when no round compared strategies);
    writes its plot."""
    compared = [(r["round"], res, r.get(BUDGET)) for r in rows if (res := _results(r))]
    if not compared:
        return []
    cells = [
        [
            "start" if round_ == -1 else str(round_),
            name,
            _fmt(m.get("num_samples")),
            _fmt(m.get("turns")),
            _fmt(m.get("temperature")),
            _fmt(m.get("accuracy")),
            _fmt(m.get("oracle_accuracy")),
            _fmt(m.get("score")),
            _fmt(m.get("tokens_per_prompt")),
            _fmt(m.get("prompt_tokens_per_prompt")),
            _fmt(_processed(m)),
        ]
        for round_, res, _ in compared
        for name, m in res.items()
    ]
    _plot(run, *compared[-1])
    budgets = sorted({b for _, _, b in compared if b})
    matched = (
        f" N and K were chosen per strategy for a budget of {', '.join(f'{b:g}' for b in budgets)} tokens processed "
        "per prompt: the grid point whose cost, estimated from the round's greedy chain (a first answer, a "
        "refinement turn), is closest; the table shows what each then cost."
        if budgets
        else " N and K as configured (run.eval_num_samples, run.eval_turns): compare at matched compute with "
        "run.eval_budget_tokens."
    )
    return [
        ("h", 2, "Inference strategies"),
        (
            "p",
            "Final answers picked per strategy: best-of-N by a reward model, never by the answer key "
            "(parallel, parallel_chain; under scoring.kind=verifier the verifier only grades the pick), the "
            "majority answer (vote), the last turn (direct, chain). pass@N is the share of prompts where one "
            "of the N final answers is right: what a pick by the answer key would score, an oracle, not a "
            "strategy. N chains, K refinement turns each, sampled at the temperature shown (0: greedy). "
            "Cost per prompt: tokens generated, prompt tokens read (every refinement turn reads the question "
            "and the previous answer again) and their sum, tokens processed." + matched,
        ),
        (
            "table",
            [
                "round",
                "strategy",
                "N",
                "K",
                "temperature",
                "accuracy",
                "pass@N (oracle)",
                "score",
                "generated tok/prompt",
                "prompt tok/prompt",
                "processed tok/prompt",
            ],
            cells,
        ),
        ("img", PLOT.removeprefix("plots/"), "accuracy against tokens processed per prompt"),
    ]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _plot(run: Path, round_: int, res: dict[str, dict[str, float]], budget: float | None) -> None:
    os.environ.setdefault("MPLCONFIGDIR", str(run / ".cache" / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantity = "accuracy" if any("accuracy" in m for m in res.values()) else "score"
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, m in res.items():
        x = _processed(m)
        if quantity in m and x is not None:
            ax.plot(x, m[quantity], "o")
            label = f"{name} N={_fmt(m.get('num_samples'))} K={_fmt(m.get('turns'))} T={_fmt(m.get('temperature'))}"
            ax.annotate(label, (x, m[quantity]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.3)  # room for the labels right of the points
    if budget:
        ax.axvline(budget, color="grey", linestyle=":", label=f"budget {budget:g}")
        ax.legend(fontsize=7)
    ax.set(
        xlabel="tokens processed per prompt (prompt + generated)",
        ylabel=quantity,
        title=f"strategies after round {round_}",
    )
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    atomic_write(run / PLOT, png.getvalue())
