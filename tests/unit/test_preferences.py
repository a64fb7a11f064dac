"""Stage 1's preference reader: the three common row shapes, skips counted, the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolve_ray.config import PAPER_REFINE_TEMPLATE, load_config
from evolve_ray.core.refine import refine_user_turn
from evolve_ray.errors import UserError
from evolve_ray.tasks.preferences import PreferenceSet, parse_preference


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_ultrafeedback_trl_and_plain_rows_give_the_same_triple() -> None:
    ultrafeedback = {"prompt_id": "a1", "prompt": "Q?", "chosen": _chat("Q?", "good"), "rejected": _chat("Q?", "bad")}
    trl_conversational = {  # what `evolve-ray export --format trl` writes
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    plain = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    no_prompt_field = {"chosen": _chat("Q?", "good"), "rejected": _chat("Q?", "bad")}
    for row in (ultrafeedback, trl_conversational, plain, no_prompt_field):
        got = parse_preference(row, 7)
        assert (got.question, got.chosen, got.rejected) == ("Q?", "good", "bad"), row
    assert parse_preference(ultrafeedback, 7).id == "a1"
    assert parse_preference(plain, 7).id == "row-7"


def test_bad_rows_are_skipped_and_counted_by_reason(tmp_path: Path, caplog) -> None:
    good = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    bad = [
        "{not json",
        {"prompt": "Q?", "chosen": "same", "rejected": "same"},
        {"prompt": "Q?", "chosen": "x"},
        {"prompt": "Q?", "chosen": 3, "rejected": "y"},
        {"prompt": "  ", "chosen": "x", "rejected": "y"},
        {"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}], "rejected": "y"},
    ]
    prefs = PreferenceSet(str(_write(tmp_path / "p.jsonl", good + bad)), eval_prompts=2, seed=0)
    assert prefs.skipped == {
        "invalid_json": 1,
        "no_preference": 1,
        "missing_field": 2,  # no rejected; no assistant turn in chosen
        "wrong_type": 1,
        "empty_text": 1,
    }
    assert len(prefs.train_rows) == 4 and len(prefs.prompts("eval", 10)) == 2
    assert "6 rows skipped" in caplog.text or "rows skipped" in caplog.text


def test_held_out_prompts_are_never_trained_on_even_when_repeated(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q{i % 5}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    prefs = PreferenceSet(str(_write(tmp_path / "p.jsonl", rows)), eval_prompts=2, seed=3)
    held = {p.question for p in prefs.prompts("eval", 10)}
    assert len(held) == 2 == len(prefs.prompts("eval", 10))  # one eval prompt per distinct question
    trained = {p.question for p in prefs.pairs(PAPER_REFINE_TEMPLATE)}
    assert trained and not trained & held
    assert len(prefs.train_rows) == 12  # 3 of the 5 questions, 4 rows each


def test_each_row_becomes_a_direct_and_a_refine_pair_on_the_rejected_answer(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    prefs = PreferenceSet(str(_write(tmp_path / "p.jsonl", rows)), eval_prompts=1, seed=0)
    pairs = prefs.pairs(PAPER_REFINE_TEMPLATE, max_rows=3)
    assert [p.kind for p in pairs] == ["direct", "refine"] * 3
    direct, refine = pairs[0], pairs[1]
    assert direct.prompt == direct.question
    assert refine.prompt == refine_user_turn(PAPER_REFINE_TEMPLATE, refine.question, refine.rejected)
    assert refine.chosen == direct.chosen != direct.rejected
    assert len(prefs.pairs(PAPER_REFINE_TEMPLATE)) == 2 * 9


def test_a_file_without_one_usable_row_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "a", "rejected": "a"}])
    with pytest.raises(UserError, match="no valid prompt rows .*no_preference=1"):
        PreferenceSet(str(path), eval_prompts=1, seed=0)


def test_stage1_settings_without_stage1_are_refused() -> None:
    with pytest.raises(UserError, match="sft.lr is set but sft.data is empty"):
        load_config(None, ["sft.lr=1e-4"])
    assert load_config(None, ["sft.data=p.jsonl", "sft.lr=1e-4"]).sft.lr == 1e-4


def test_stage1_with_a_verifier_is_refused() -> None:
    """Stage 1's held-out prompts come from the preference file: nothing for a verifier to check."""
    with pytest.raises(UserError, match="sft.data needs scoring.kind=reward_model"):
        load_config(None, ["sft.data=p.jsonl", "scoring.kind=verifier"])


def test_stage1_term_weights_apply_in_a_two_stage_run() -> None:
    cfg = load_config(None, ["sft.data=p.jsonl", "training.sft_refine_weight=0.5"])
    assert cfg.training.loss == "evolve" and cfg.training.sft_refine_weight == 0.5
    with pytest.raises(UserError, match="sft_refine_weight"):
        load_config(None, ["training.sft_refine_weight=0.5"])  # no Stage 1, loss evolve: no effect
