"""The bench's report writer and goal checks on fixed inputs (no ray, no measuring)."""

from __future__ import annotations

import json
import math

import pytest

from evolve_ray.bench.report import BenchResult, Figure, Goal, build_doc, render_markdown, write

RUN = {
    "command": "evolve-ray bench --out X",
    "started": "2026-01-01 00:00:00",
    "load_avg_start": [2.5, 1.0, 0.5],
    "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "ram_gib": 24.0, "platform": "linux", "ray_cluster": "local"},
    "versions": {"python": "3.11", "torch": "2.13.0"},
    "total_seconds": 12.0,
}


def _results() -> list[BenchResult]:
    return [
        BenchResult(
            "gen_overhead",
            figures=[Figure("tok/s", 950.0, "tok/s", 1000.0, "bare", Goal("ratio", ">=", 0.90))],
            settings={"prompts": 32},
            memory_mb={"GeneratorActor": 812.4},
        ),
        BenchResult(
            "push",
            figures=[
                Figure("push 100M to 1", 2.0, "s", 0.4, "1 copy", Goal("ratio", "<=", 4.0)),  # 5x: missed
                Figure("push 10M to 1", 0.3, "s", 0.05, "1 copy"),  # no goal below 100M
            ],
            notes=["a note"],
        ),
        BenchResult("train_step", error="RuntimeError: boom"),
    ]


@pytest.mark.parametrize(
    ("goal", "value", "ratio", "met"),
    [
        (Goal("ratio", ">=", 0.9), 1.0, 0.9, True),  # the limit itself meets the goal
        (Goal("ratio", ">=", 0.9), 1.0, 0.8999, False),
        (Goal("ratio", "<=", 4.0), 1.0, 4.01, False),
        (Goal("value", "<=", 2.0), 1.99, None, True),  # a value goal ignores the ratio
        (Goal("value", "<=", 2.0), 2.5, 0.1, False),
        (Goal("ratio", ">=", 1.0), 5.0, None, None),  # no peer measured: not decided either way
        (Goal("value", "<=", 300.0), math.nan, None, None),
    ],
)
def test_goal_check(goal: Goal, value: float, ratio: float | None, met: bool | None) -> None:
    assert goal.check(value, ratio) is met


def test_figure_ratio_is_value_over_peer_and_feeds_the_goal() -> None:
    f = Figure("push", 2.0, "s", 0.4, "copy", Goal("ratio", "<=", 4.0))
    row = f.row()
    assert row["ratio"] == pytest.approx(5.0)
    assert row["met"] is False and row["goal"] == "<= 4x"
    assert Figure("x", 1.0, "s").row()["ratio"] is None
    assert Figure("x", 1.0, "s", peer=0.0).row()["ratio"] is None  # no division by zero
    assert Goal("value", "<=", 2).text("s") == "<= 2 s"


def test_doc_sorts_goals_into_met_missed_unmeasured() -> None:
    doc = build_doc(_results(), RUN)
    assert doc["goals"]["met"] == ["gen_overhead: tok/s"]
    assert doc["goals"]["missed"] == ["push: push 100M to 1"]
    assert doc["goals"]["unmeasured"] == ["train_step: failed (RuntimeError: boom)"]
    assert doc["shared_machine"] is True  # load 2.5 > 1.5
    assert build_doc(_results(), RUN | {"load_avg_start": [1.0, 1.0, 1.0]})["shared_machine"] is False


def test_markdown_has_every_figure_machine_versions_memory_and_the_shared_warning() -> None:
    md = render_markdown(build_doc(_results(), RUN))
    assert "| gen_overhead | tok/s | 950 tok/s | 1,000 (bare) | 0.95 | >= 0.9x | yes |" in md
    assert "| push | push 100M to 1 | 2 s | 0.4 (1 copy) | 5 | <= 4x | NO |" in md
    assert "| push | push 10M to 1 | 0.3 s | 0.05 (1 copy) | 6 | - | - |" in md
    assert "| train_step | FAILED: RuntimeError: boom |" in md
    assert "2 CPUs (Test CPU), 24.0 GiB RAM" in md and "torch 2.13.0" in md
    assert "**The machine was shared**" in md and "2.50, 1.00, 0.50" in md
    assert "| gen_overhead | GeneratorActor | 812 |" in md
    assert "prompts=32" in md and "  - a note" in md


def test_write_puts_json_and_markdown_side_by_side_and_nan_becomes_null(tmp_path) -> None:
    results = [BenchResult("demo", figures=[Figure("wall", math.nan, "s", goal=Goal("value", "<=", 300.0))])]
    j, md = write(build_doc(results, RUN), tmp_path / "out" / "bench.json")
    assert md == tmp_path / "out" / "bench.md" and md.exists()
    doc = json.loads(j.read_text())  # strict JSON: no NaN
    fig = doc["benchmarks"][0]["figures"][0]
    assert fig["value"] is None and fig["met"] is None
    assert doc["goals"]["unmeasured"] == ["demo: wall"]
