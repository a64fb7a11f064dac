"""`evolve-ray reproduce --smoke`: every arm runs through the product path and the tables are written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evolve_ray.errors import UserError
from evolve_ray.experiments.comparison import ARMS, LR_GRID, columns
from evolve_ray.experiments.reproduce import reproduce
from evolve_ray.reporting.report import load_rows


def test_smoke_reproduce_writes_the_tables(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "reproduce"
    reproduce(out, seeds=[0], rounds=1, smoke=True, command="evolve-ray reproduce --smoke")
    result = json.loads((out / "reproduce.json").read_text())
    assert list(result["arms"]) == list(ARMS)
    for name, agg in result["arms"].items():
        (run,) = agg["runs"]
        assert set(columns()) - {"examples_per_round"} <= set(run), name
        assert all(0.0 <= run[c] <= 1.0 for c in columns() if c.endswith(("_acc", "_improved", "_degraded")))
        if "lr" in agg:  # a round-based arm: trained on something, at the smoke's one learning rate
            assert run["examples_per_round"] > 0 and run["lr"] == agg["lr"] == LR_GRID[-1], name
            run_dir = out / name / f"lr{LR_GRID[-1]:g}" / "seed0" / "run"
            assert (run_dir / "checkpoints" / "r000").is_dir()
            # run.eval_start=false: no start row (the sr_sft arm's evaluation is the start), round 0's is there
            assert [r["round"] for r in load_rows(run_dir)] == [0], name
        assert agg["std"]["direct_acc"] == 0.0  # one seed
    assert {n for n, a in result["arms"].items() if "lr" in a} == set(ARMS) - {"direct_sft", "sr_sft"}
    assert set(result["arms"]["evolve"]["lr_sweep"]) == {f"{LR_GRID[-1]:g}"}
    table = (out / "reproduce.md").read_text()
    widths = {line.count("|") - 1 for line in table.splitlines() if line.startswith("| ")}
    assert max(widths) <= 8  # narrow tables: at most 8 columns
    assert sum(line.startswith("| EVOLVE |") for line in table.splitlines()) == 2  # accuracy + shares
    assert (out / "reproduce.png").stat().st_size > 0
    assert math.isfinite(result["arms"]["sr_sft"]["mean"]["direct_acc"])


def test_unknown_or_incomplete_arm_lists_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown arm 'ppo'"):
        reproduce(tmp_path, seeds=[0], rounds=1, smoke=True, only=("ppo",))
    with pytest.raises(UserError, match="evolve is needed"):
        reproduce(tmp_path, seeds=[0], rounds=1, smoke=True, only=("evolve_no_keep",))
