"""The paper's comparison at demo scale: the arms, their config overrides, and the table.

Arms (docs/method.md; every arm is evaluated with the same greedy chain, 3 refinement turns):
    direct_sft     the Stage-1 recipe without its refinement term (only direct answers), asked to refine
    sr_sft         self-refinement-aware SFT: the warm start itself
    iterative_dpo  DPO rounds on direct samples (parallel, N=4, best vs worst by the reward model)
    evolve         EVOLVE rounds: chain of self-refinement, direct + refinement terms
    inpo           INPO rounds on the same direct samples as iterative_dpo
The three round-based arms start from the sr_sft warm start. Pure: no ray (matplotlib for the plot).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARMS = ("direct_sft", "sr_sft", "iterative_dpo", "evolve", "inpo")
TURNS = 3

_DIRECT_SAMPLES = ["generation.strategy=parallel", "generation.num_samples=4", "selection.rule=reward"]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    start: str  # which warm-start part the arm starts from
    sets: tuple[str, ...]  # config overrides; empty for the evaluation-only arms
    trains: bool


def arms() -> dict[str, Arm]:
    return {
        "direct_sft": Arm("direct_sft", "SFT on direct answers only", "policy_direct_only", (), False),
        "sr_sft": Arm("sr_sft", "SR-aware SFT (warm start)", "policy", (), False),
        "iterative_dpo": Arm("iterative_dpo", "Iterative DPO", "policy", ("training.loss=dpo", *_DIRECT_SAMPLES), True),
        "evolve": Arm(
            "evolve",
            "EVOLVE",
            "policy",
            ("training.loss=evolve", "generation.strategy=chain", "generation.num_samples=1"),
            True,
        ),
        "inpo": Arm("inpo", "INPO", "policy", ("training.loss=inpo", *_DIRECT_SAMPLES), True),
    }


def seed_sets(seed: int) -> list[str]:
    """One seed drives the prompts drawn, the sampling and the training order."""
    return [f"data.seed={seed}", f"generation.seed={seed}", f"training.seed={seed}"]


SMOKE_SETS = (
    "data.prompts_per_round=4",
    "data.eval_prompts=8",
    "training.batch_size=4",
    "training.epochs=1",
    "training.num_workers=1",
)


def columns(turns: int = TURNS) -> list[str]:
    cols = ["direct_acc"] + [f"turn_{k}_acc" for k in range(1, turns + 1)]
    for k in range(1, turns + 1):
        cols += [f"turn_{k}_improved", f"turn_{k}_degraded"]
    return cols + ["pairs_per_round", "wall_s"]


def row_from_metrics(eval_metrics: dict[str, Any], *, pairs_per_round: float, wall_s: float) -> dict[str, float]:
    """One arm-seed row from the evaluate stage's keys (eval/turn_k_accuracy, eval/acc_turn_k_*)."""
    row = {"direct_acc": eval_metrics.get("eval/turn_0_accuracy", math.nan)}
    for k in range(1, TURNS + 1):
        row[f"turn_{k}_acc"] = eval_metrics.get(f"eval/turn_{k}_accuracy", math.nan)
        row[f"turn_{k}_improved"] = eval_metrics.get(f"eval/acc_turn_{k}_improved_frac", math.nan)
        row[f"turn_{k}_degraded"] = eval_metrics.get(f"eval/acc_turn_{k}_degraded_frac", math.nan)
    return row | {"pairs_per_round": pairs_per_round, "wall_s": wall_s}


def aggregate(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (0 for one run) of every column over seeds."""
    out: dict[str, dict[str, float]] = {"mean": {}, "std": {}}
    for col in columns():
        vals = [r[col] for r in runs if math.isfinite(r.get(col, math.nan))]
        out["mean"][col] = statistics.fmean(vals) if vals else math.nan
        out["std"][col] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def _cell(mean: float, std: float, col: str) -> str:
    if not math.isfinite(mean):
        return "-"
    if col == "wall_s":
        return f"{mean:.0f} ± {std:.0f}"
    if col == "pairs_per_round":
        return f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.3f} ± {std:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """reproduce.md: one row per arm, mean ± std over seeds."""
    cols = columns()
    names = {a.name: a.label for a in arms().values()}
    lines = [
        "# Reproduction at demo scale: built-in addition task\n",
        f"Seeds {result['seeds']}, {result['rounds']} round(s) for the round-based arms; greedy chain "
        f"evaluation on {result['eval_prompts']} held-out prompts, {TURNS} refinement turns. "
        "Cells: mean ± std over seeds. acc = verifier accuracy; improved / degraded = share of prompts "
        "whose correctness went up / down at that turn. wall_s: evaluation only for the SFT arms.\n",
        f"Command: `{result['command']}`\n",
        "| arm | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for arm, agg in result["arms"].items():
        cells = [_cell(agg["mean"][c], agg["std"][c], c) for c in cols]
        lines.append(f"| {names.get(arm, arm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![accuracy per turn](reproduce.png)\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Accuracy per refinement turn, one line per arm, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {a.name: a.label for a in arms().values()}
    keys = ["direct_acc"] + [f"turn_{k}_acc" for k in range(1, TURNS + 1)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm, agg in result["arms"].items():
        ax.errorbar(
            range(len(keys)),
            [agg["mean"][k] for k in keys],
            yerr=[agg["std"][k] for k in keys],
            marker="o",
            capsize=3,
            label=names.get(arm, arm),
        )
    ax.set(xlabel="refinement turn (0 = direct answer)", ylabel="eval accuracy", title="accuracy per turn")
    ax.set_xticks(range(len(keys)))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
