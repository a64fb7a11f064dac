"""The strategy comparison in report.md: a table row per strategy and a plot, only when compared."""

from __future__ import annotations

from evolve_ray.report import append_row, write_report
from evolve_ray.report_strategies import PLOT, final_line


def test_strategy_table_and_plot(tmp_path) -> None:
    append_row(tmp_path, {"round": 0, "eval/turn_0_score": 0.1})
    row = {"round": 1, "eval/turn_0_score": 0.2}
    for name, acc, tokens in (("chain", 0.4, 12.0), ("vote", 0.7, 48.0), ("parallel", 0.5, 16.0)):
        row |= {
            f"strategy/{name}_accuracy": acc,
            f"strategy/{name}_score": acc - 1,
            f"strategy/{name}_tokens_per_prompt": tokens,
        }
    append_row(tmp_path, row)
    md = write_report(tmp_path).read_text()
    assert "## Inference strategies" in md
    assert "| 1 | vote | 0.7 | -0.3 | 48 |" in md and "| 1 | parallel | 0.5 | -0.5 | 16 |" in md
    assert f"]({PLOT})" in md and (tmp_path / PLOT).stat().st_size > 1000
    assert md.count(PLOT) == 1  # not listed again among the per-round plots


def test_no_section_without_a_comparison(tmp_path) -> None:
    append_row(tmp_path, {"round": 0, "eval/turn_0_score": 0.1})
    assert "Inference strategies" not in write_report(tmp_path).read_text()
    assert not (tmp_path / PLOT).exists()


def test_final_line() -> None:
    m = {"eval/final_accuracy": 0.75, "eval/final_score": float("nan"), "eval/tokens_per_prompt": 31.5}
    assert final_line("vote", m) == "strategy vote: accuracy=0.750 score=- tokens/prompt=31.500"
