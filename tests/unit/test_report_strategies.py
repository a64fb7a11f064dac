"""The strategy comparison in report.md: a table row per strategy (N, K, temperature, accuracy,
pass@N under its own name, score, generated / prompt / processed tokens) and a plot, only when
compared; the budget the N and K were matched to is said."""

from __future__ import annotations

from evolve_ray.reporting.metric_keys import explain
from evolve_ray.reporting.report import append_row, write_report
from evolve_ray.reporting.report_strategies import PLOT, final_line


def _strategy(name: str, n: int, k: int, t: float, acc: float, tokens: float, prompt_tokens: float) -> dict:
    row = {
        f"strategy/{name}_num_samples": float(n),
        f"strategy/{name}_turns": float(k),
        f"strategy/{name}_temperature": t,
        f"strategy/{name}_accuracy": acc,
        f"strategy/{name}_score": acc - 1,
        f"strategy/{name}_tokens_per_prompt": tokens,
        f"strategy/{name}_prompt_tokens_per_prompt": prompt_tokens,
    }
    if n > 1:
        row[f"strategy/{name}_oracle_accuracy"] = acc + 0.1
    return row


def test_strategy_table_and_plot(tmp_path) -> None:
    append_row(tmp_path, {"round": 0, "eval/turn_0_score": 0.1})
    row = {"round": 1, "eval/turn_0_score": 0.2}
    row |= _strategy("chain", 1, 3, 0.0, 0.4, 12.0, 250.0)
    row |= _strategy("vote", 4, 2, 0.7, 0.7, 48.0, 700.0)
    row |= _strategy("parallel", 4, 0, 0.7, 0.5, 16.0, 36.0)
    append_row(tmp_path, row)
    md = write_report(tmp_path).read_text()
    assert "## Inference strategies" in md
    assert "| round | strategy | N | K | temperature | accuracy | pass@N (oracle) | score |" in md
    assert "| 1 | vote | 4 | 2 | 0.7 | 0.7 | 0.8 | -0.3 | 48 | 700 | 748 |" in md
    assert "| 1 | chain | 1 | 3 | 0 | 0.4 | - | -0.6 | 12 | 250 | 262 |" in md  # one chain: no pass@N
    assert "best-of-N by a reward model, never by the answer key" in md
    assert "compare at matched compute with run.eval_budget_tokens" in md  # no budget was set
    assert f"]({PLOT})" in md and (tmp_path / PLOT).stat().st_size > 1000
    assert md.count(PLOT) == 1  # not listed again among the per-round plots
    assert [k for k in row if k != "round" and explain(k) is None] == []  # every key in the glossary


def test_a_budget_is_said_with_the_table(tmp_path) -> None:
    row = {"round": 0, "strategy/budget_tokens": 200.0} | _strategy("chain", 1, 2, 0.0, 0.8, 8.0, 170.0)
    append_row(tmp_path, row)
    md = write_report(tmp_path).read_text()
    assert "for a budget of 200 tokens processed per prompt" in md
    assert explain("strategy/budget_tokens")[0] == "strategy/budget_tokens"  # not read as a strategy named budget


def test_no_section_without_a_comparison(tmp_path) -> None:
    append_row(tmp_path, {"round": 0, "eval/turn_0_score": 0.1})
    assert "Inference strategies" not in write_report(tmp_path).read_text()
    assert not (tmp_path / PLOT).exists()


def test_final_line_names_the_pick_and_the_oracle_apart() -> None:
    m = {
        "num_samples": 4,
        "turns": 0,
        "temperature": 0.7,
        "eval/final_accuracy": 0.792,
        "eval/final_oracle_accuracy": 0.854,
        "eval/final_score": float("nan"),
        "eval/tokens_per_prompt": 10.6,
        "eval/prompt_tokens_per_prompt": 36.0,
    }
    assert final_line("parallel", m) == (
        "strategy parallel (N=4 K=0 temperature=0.7): accuracy=0.792 (best-of-N: picked by the reward model) "
        "pass@4 (oracle: the answer key picks)=0.854 score=- generated tokens/prompt=10.6 prompt tokens/prompt=36.0"
    )
    chain = {"num_samples": 1, "turns": 3, "temperature": 0.0, "eval/final_accuracy": 0.75}
    assert final_line("chain", chain).startswith("strategy chain (N=1 K=3 temperature=0): accuracy=0.750 score=-")
