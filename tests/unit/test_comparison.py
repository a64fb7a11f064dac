"""The comparison's pure parts: the learning-rate choice and the tables."""

from __future__ import annotations

import math

from evolve_ray.experiments.comparison import (
    ACC_COLUMNS,
    LR_GRID,
    SHARE_COLUMNS,
    aggregate,
    goals,
    lr_criterion,
    markdown,
)
from evolve_ray.experiments.reproduce import _best_lr


def test_lr_criterion_reads_the_last_rounds_last_turn_on_round_prompts() -> None:
    rows = [
        {"round": -1, "eval/turn_0_accuracy": 0.9},  # the start row (held-out prompts) is never used
        {"round": 0, "refine/turn_0_accuracy": 0.5, "refine/turn_3_accuracy": 0.6},
        {"round": 1, "refine/turn_0_accuracy": 0.55, "refine/turn_3_accuracy": 0.7, "eval/turn_3_accuracy": 0.1},
    ]
    assert lr_criterion(rows) == 0.7
    assert lr_criterion([{"round": 0, "refine/turn_0_accuracy": 0.4}]) == 0.4  # direct samples: turn 0
    assert math.isnan(lr_criterion([{"round": 0}]))


def test_best_lr_takes_the_highest_criterion_nan_last_ties_to_the_smaller() -> None:
    assert _best_lr({"1e-05": 0.6, "5e-05": 0.7}, (1e-5, 5e-5)) == 5e-5
    assert _best_lr({"1e-05": 0.6, "5e-05": math.nan}, (1e-5, 5e-5)) == 1e-5
    assert _best_lr({"1e-05": 0.7, "5e-05": 0.7}, (1e-5, 5e-5)) == 1e-5


def test_markdown_tables_are_narrow_and_carry_the_chosen_lr() -> None:
    run = {c: 0.5 for c in [*ACC_COLUMNS, *SHARE_COLUMNS]} | {"examples_per_round": 300.0, "wall_s": 60.0}
    result = {
        "command": "evolve-ray reproduce",
        "seeds": [0, 1],
        "rounds": 3,
        "eval_prompts": 500,
        "arms": {
            "sr_sft": {"runs": [run, run]} | aggregate([run, run]),
            "evolve": {"runs": [run], "lr": 5e-5, "lr_sweep": {"1e-05": 0.8, "5e-05": 0.9}} | aggregate([run]),
        },
    }
    md = markdown(result)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert max(line.count("|") - 1 for line in rows) <= 8
    assert "| EVOLVE | 5e-05 | 0.500 ± 0.000 |" in md and "| SR-aware SFT (warm start) | - |" in md
    assert "| evolve | 0.800 | 0.900 |" in md and len(LR_GRID) == 2


def test_goals_are_checked_against_the_means() -> None:
    def agg(direct: float, t3: float, fixed: float, broken: float, std: float) -> dict:
        row = {c: 0.0 for c in [*ACC_COLUMNS, *SHARE_COLUMNS]} | {"direct_acc": direct, "turn_3_acc": t3}
        row |= {"turn_1_acc": t3, "turn_1_improved": fixed, "turn_1_degraded": broken}
        return {"mean": row, "std": {c: std for c in row}}

    result = {
        "arms": {
            "sr_sft": agg(0.78, 0.76, 0.09, 0.10, 0.0),
            "evolve": agg(0.82, 0.88, 0.09, 0.04, 0.01),
            "iterative_dpo": agg(0.80, 0.80, 0.05, 0.05, 0.05),
            "direct_sft": agg(0.82, 0.0, 0.0, 0.82, 0.0),
        }
    }
    met = {g: ok for g, _, ok in goals(result)}
    assert met == {
        "EVOLVE: refined - direct >= 0.05": True,  # 0.88 - 0.82
        "EVOLVE: turn-1 fixed >= 2 x broken": True,  # 0.09 >= 0.08
        "EVOLVE: last round no worse than the start": True,
        "EVOLVE refined > iterative_dpo by more than the pooled std": True,  # 0.08 > sqrt((0.01^2+0.05^2)/2)
        "direct-only SFT cannot refine (turn 1 < direct)": True,
    }
    result["arms"]["evolve"] = agg(0.70, 0.72, 0.05, 0.04, 0.01)
    met = {g: ok for g, _, ok in goals(result)}
    assert not met["EVOLVE: refined - direct >= 0.05"] and not met["EVOLVE: last round no worse than the start"]
    assert not met["EVOLVE: turn-1 fixed >= 2 x broken"]
