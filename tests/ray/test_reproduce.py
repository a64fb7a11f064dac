"""`evolve-ray reproduce --smoke`: every arm runs through the product path, the tables are written,
and `--docs-page` rewrites the page's generated block with them."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from evolve_ray.cli import main
from evolve_ray.errors import UserError
from evolve_ray.experiments.comparison import ARMS, LR_GRID, columns
from evolve_ray.experiments.reproduce import reproduce
from evolve_ray.reporting.docs_page import block, embed, markers
from evolve_ray.reporting.report import load_rows

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_reproduce_writes_the_tables(ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "reproduce"
    page = tmp_path / "docs/results.md"  # a copy of the docs page, whose block the command rewrites
    page.parent.mkdir()
    shutil.copy(ROOT / "docs/results.md", page)
    before = page.read_text(encoding="utf-8")
    argv = ["reproduce", "--smoke", "--out", str(out), "--docs-page", str(page)]
    monkeypatch.setattr(sys, "argv", ["evolve-ray", *argv])  # what the command records as itself
    assert main(argv) == 0
    result = json.loads((out / "reproduce.json").read_text())
    assert result["command"] == "evolve-ray " + " ".join(argv)
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
    # The page: its block is this run's reproduce.md under a line naming the command; the rest is as it was.
    after = page.read_text(encoding="utf-8")
    start, end = markers("reproduce")
    assert after[: after.index(start)] == before[: before.index(start)]
    assert after[after.index(end) :] == before[before.index(end) :]
    body = block(after, "reproduce")
    assert body.startswith(f"*Written by `evolve-ray {' '.join(argv)}`, which ran at ")
    assert body.endswith(embed(table, level=3)) and "#### Accuracy per turn" in body
    assert "47 min 24 s" not in body and "reproduce.png)" not in body  # the old tables and the image are gone


def test_a_docs_page_without_the_block_is_refused_before_any_arm_runs(tmp_path: Path) -> None:
    page = tmp_path / "page-without-block"
    page.write_text("# Results\n\nno generated block here\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"page-without-block has no generated block 'reproduce'"):
        reproduce(tmp_path / "out", seeds=[0], rounds=1, smoke=True, docs_page=page)
    with pytest.raises(UserError, match=r"docs page .*missing-page does not exist"):
        reproduce(tmp_path / "out", seeds=[0], rounds=1, smoke=True, docs_page=tmp_path / "missing-page")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_unknown_or_incomplete_arm_lists_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown arm 'ppo'"):
        reproduce(tmp_path, seeds=[0], rounds=1, smoke=True, only=("ppo",))
    with pytest.raises(UserError, match="evolve is needed"):
        reproduce(tmp_path, seeds=[0], rounds=1, smoke=True, only=("evolve_no_keep",))
