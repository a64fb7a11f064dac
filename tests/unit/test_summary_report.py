"""The headline table, the stage lines, and report.md / report.html built from report.json rows."""

from __future__ import annotations

import re
from pathlib import Path

from evolve_ray.reporting.metric_keys import explain, glossary_for
from evolve_ray.reporting.report import append_row, write_report
from evolve_ray.reporting.summary import MAX_COLUMNS, headline, headline_text, split_columns, stage_line


def eval_row(round_: int, acc: list[float], **extra: float) -> dict:
    row: dict = {"round": round_}
    for t, a in enumerate(acc):
        row[f"eval/turn_{t}_accuracy"] = a
        row[f"eval/turn_{t}_score"] = a - 0.5
    row["eval/acc_turn_1_improved_frac"] = 0.1
    row["eval/acc_turn_1_degraded_frac"] = 0.25
    return row | extra


ROWS = [
    eval_row(-1, [0.5, 0.4, 0.45, 0.4], **{"time/evaluate_s": 3.0}),  # the evaluation before training
    eval_row(0, [0.6, 0.5, 0.55, 0.5], **{"pairs/count": 12.0, "time/round_s": 30.4, "train/loss": 0.6}),
    eval_row(1, [0.7, 0.65, 0.6, 0.62], **{"pairs/count": 9.0, "time/round_s": 25.0, "eval/turn_1_mean_tokens": 7}),
]


def test_headline_has_per_turn_accuracy_shares_pairs_and_seconds() -> None:
    names, cells = headline(ROWS)
    assert names == ["round", "direct accuracy", "turn 1", "turn 2", "turn 3", "turn 1 fixed / broken", "pairs", "s"]
    assert cells[0] == ["start", "0.500", "0.400", "0.450", "0.400", "0.100 / 0.250", "-", "-"]
    assert cells[1] == ["0", "0.600", "0.500", "0.550", "0.500", "0.100 / 0.250", "12", "30"]


def test_headline_falls_back_to_scores_and_dashes_for_missing_keys() -> None:
    rows = [{"round": 0, "eval/turn_0_score": 1.25, "eval/turn_1_score": 1.5}, {"round": 1}]
    names, cells = headline(rows)
    assert names[1] == "direct score" and names[-3] == "turn 1 improved / degraded"
    assert cells == [["0", "1.250", "1.500", "-", "-", "-"], ["1", "-", "-", "-", "-", "-"]]


def test_wide_tables_are_split_repeating_the_first_column() -> None:
    names = ["round", *[f"c{i}" for i in range(12)]]
    cells = [["0", *[str(i) for i in range(12)]]]
    parts = split_columns(names, cells)
    assert [len(n) for n, _ in parts] == [8, 6] and all(n[0] == "round" and c[0][0] == "0" for n, c in parts)
    assert [x for n, _ in parts for x in n[1:]] == names[1:]


def test_stage_lines_carry_the_key_figures() -> None:
    m = {"gen/prompts": 128.0, "buffer/candidates": 512.0, "pairs/count": 220.0, "time/collect_s": 3.04}
    assert (
        stage_line(0, "collect", m) == "round 0 collect: 128 prompts, 512 candidates, 220 pairs, reward mean - (3.0 s)"
    )
    line = stage_line(-1, "evaluate", ROWS[0])
    assert (
        line
        == "round start evaluate: accuracy by turn 0.500 0.400 0.450 0.400, turn 1 fixed / broken 0.100 / 0.250 (3 s)"
    )
    assert "skipped (no pairs)" in stage_line(2, "train", {"train/skipped": 1.0, "policy/version": 2.0})


def test_glossary_explains_every_key_including_round_minus_one_additions() -> None:
    for key in [
        "eval/turn_12_accuracy",
        "eval/turn_2_mean_tokens",
        "score/rm_verifier_agreement",
        "pairs/chosen_wrong_frac",
        "gen/tokens",
        "time/round_s",
        "pairs/dropped_tie",
        "eval/acc_turn_3_degraded_frac",
        "train/refine_acc",
        "gen/skipped_question_too_long",
    ]:
        assert explain(key) is not None, key
    assert explain("train/no_such_key") is None
    entries = glossary_for(["eval/turn_0_accuracy", "eval/turn_1_accuracy"])
    assert entries == [("eval/turn_k_accuracy", explain("eval/turn_0_accuracy")[1])]  # explained once


def test_report_headline_first_narrow_tables_and_html(tmp_path: Path) -> None:
    for row in ROWS:
        append_row(tmp_path, row)
    md = write_report(tmp_path).read_text()
    tables = [line for line in md.splitlines() if line.startswith("|") and not line.startswith("|---")]
    assert tables[0].startswith("| round | direct accuracy | turn 1 |")
    assert "| start | 0.500 |" in md and "| 1 | 0.700 |" in md
    assert max(line.count("|") - 1 for line in tables) <= MAX_COLUMNS
    assert md.index("![score_per_round]") < md.index("## Evaluation")  # key plots right after the headline
    assert "`eval/turn_k_accuracy`" in md and "`eval/turn_k_mean_tokens`" in md and "Not in the glossary" not in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
    assert "no round has finished yet" in headline_text([])


def test_more_rounds_than_fit_are_split_into_several_tables(tmp_path: Path) -> None:
    for r in range(10):
        append_row(tmp_path, eval_row(r, [0.5, 0.4], **{"pairs/count": 3.0}))
    md = write_report(tmp_path).read_text()
    widths = [line.count("|") - 1 for line in md.splitlines() if line.startswith("| key |")]
    assert widths and max(widths) <= MAX_COLUMNS and len(widths) > 1
