"""Pair selection rules on crafted chains: picks, tie-breaks, drops and their reasons."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from evolve_ray.core.refine import refine_user_turn
from evolve_ray.core.selection import Selection, select_pairs
from evolve_ray.types import Candidate, ScoredCandidate, candidate_id

P, Q = "p1", "What is 6*7?"
TEMPLATE = "Fix: {question} | was: {answer} | new:"


def _sc(turn: int, score: float | None, text: str | None = None, chain: int = 0, version: int = 0) -> ScoredCandidate:
    parent = candidate_id(P, chain, turn - 1) if turn else None
    cand = Candidate(
        P,
        chain,
        turn,
        text if text is not None else f"c{chain}t{turn}",
        parent,
        policy_version=version or 10 + turn,
        round=2,
        strategy="chain",
    )
    return ScoredCandidate(cand, score)


def _select(rule: str, scored: list[ScoredCandidate], **kw: Any) -> Selection:
    args: dict[str, Any] = dict(
        template=TEMPLATE, round=2, min_margin=0.0, tie_tolerance=1e-6, keep_pairs=False, consistency_turns=2
    )
    return select_pairs(rule, Q, scored, **(args | kw))  # type: ignore[arg-type]


def _ids(sel: Selection) -> tuple[str, str]:
    assert sel.reason == "" and sel.pairs
    return sel.pairs[0].chosen_id, sel.pairs[0].rejected_id


def test_reward_argmax_vs_argmin_and_pair_fields() -> None:
    sel = _select("reward", [_sc(0, 0.1), _sc(1, 0.9), _sc(2, 0.5), _sc(3, 0.3)])
    assert _ids(sel) == (f"{P}/c0/t1", f"{P}/c0/t0") and sel.dropped_invalid == 0
    direct, refine = sel.pairs
    assert (direct.kind, direct.prompt, direct.question) == ("direct", Q, Q)
    assert (refine.kind, refine.prompt) == ("refine", refine_user_turn(TEMPLATE, Q, "c0t0"))
    for p in sel.pairs:
        assert (p.chosen, p.rejected, p.chosen_score, p.rejected_score) == ("c0t1", "c0t0", 0.9, 0.1)
        assert (p.prompt_id, p.round, p.rule, p.policy_version) == (P, 2, "reward", 11)


def test_a_pair_marks_which_response_stopped_at_the_token_cap() -> None:
    cut = _sc(0, 0.1)
    cut = ScoredCandidate(dataclasses.replace(cut.candidate, finish_reason="length"), cut.score)
    ended = _sc(1, 0.9)
    ended = ScoredCandidate(dataclasses.replace(ended.candidate, finish_reason="stop"), ended.score)
    for p in _select("reward", [cut, ended], keep_pairs=True).pairs:
        assert (p.chosen_cut, p.rejected_cut) == (False, True)


def test_keep_pair_shows_the_chosen_answer() -> None:
    sel = _select("reward", [_sc(0, 0.1), _sc(1, 0.9)], keep_pairs=True)
    assert [p.kind for p in sel.pairs] == ["direct", "refine", "keep"]
    assert sel.pairs[2].prompt == "Fix: What is 6*7? | was: c0t1 | new:"
    assert len({p.id for p in sel.pairs}) == 3


def test_reward_ties_prefer_latest_chosen_and_earliest_rejected() -> None:
    """Equal best scores: chosen is the latest turn (lowest chain among equal turns); equal worst
    scores: rejected is the earliest turn."""
    scored = [_sc(0, 0.2), _sc(1, 0.2), _sc(2, 0.9), _sc(3, 0.9), _sc(3, 0.9, chain=1), _sc(0, 0.2, chain=1)]
    assert _ids(_select("reward", scored)) == (f"{P}/c0/t3", f"{P}/c0/t0")


@pytest.mark.parametrize(
    ("scores", "kw", "reason"),
    [
        ([0.5, 0.5, 0.5], {}, "tie"),
        ([0.5, 0.5 + 1e-9], {}, "tie"),
        ([0.2, 0.5], {"min_margin": 0.5}, "below_margin"),
        ([0.25, 0.75], {"min_margin": 0.5}, "below_margin"),  # at the threshold: dropped
        ([0.7], {}, "single_candidate"),
        ([None, None], {}, "no_valid_scores"),
        ([0.3, None], {}, "single_candidate"),
        ([-2.0, 0.5], {"min_chosen_score": 0.5}, "chosen_below_floor"),  # at the floor: dropped
    ],
)
def test_reward_drops(scores: list[float | None], kw: dict[str, Any], reason: str) -> None:
    sel = _select("reward", [_sc(t, s) for t, s in enumerate(scores)], **kw)
    assert (sel.pairs, sel.reason) == ((), reason)
    assert sel.dropped_invalid == sum(s is None for s in scores)


def test_reward_margin_just_above_threshold_passes() -> None:
    assert _select("reward", [_sc(0, 0.2), _sc(1, 0.75)], min_margin=0.5).reason == ""


def test_reward_floor_passes_a_chosen_above_it() -> None:
    assert _ids(_select("reward", [_sc(0, -3.0), _sc(1, 0.6)], min_chosen_score=0.5)) == (f"{P}/c0/t1", f"{P}/c0/t0")


def test_invalid_scores_are_dropped_and_counted() -> None:
    sel = _select("reward", [_sc(0, None), _sc(1, 0.5), _sc(2, math.nan), _sc(3, 0.1), _sc(4, math.inf)])
    assert _ids(sel) == (f"{P}/c0/t1", f"{P}/c0/t3") and sel.dropped_invalid == 3


def test_reward_identical_texts_are_a_tie() -> None:
    sel = _select("reward", [_sc(0, 0.1, "42"), _sc(1, 0.9, "42")])
    assert sel.reason == "tie"


def test_rule_last_turn_over_first_without_scores() -> None:
    scored = [_sc(2, None), _sc(0, None), _sc(1, None), _sc(5, None, chain=1)]
    sel = _select("rule", scored)
    assert _ids(sel) == (f"{P}/c0/t2", f"{P}/c0/t0") and sel.dropped_invalid == 0
    assert sel.pairs[0].chosen_score is None
    assert _select("rule", [_sc(0, None, "a"), _sc(1, None, "a")]).reason == "tie"
    assert _select("rule", [_sc(0, None)]).reason == "single_candidate"


def test_verifier_latest_correct_over_earliest_incorrect() -> None:
    sel = _select("verifier", [_sc(0, 0.0), _sc(1, 0.0), _sc(2, 1.0), _sc(3, 1.0), _sc(4, None)])
    assert _ids(sel) == (f"{P}/c0/t3", f"{P}/c0/t0") and sel.dropped_invalid == 1
    assert (sel.pairs[0].chosen_score, sel.pairs[0].rejected_score) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("scores", "reason"),
    [
        ([0.0, 0.0, 0.0], "all_incorrect"),
        ([1.0, 1.0], "all_correct"),
        ([1.0], "single_candidate"),
        ([math.nan, None], "no_valid_scores"),
    ],
)
def test_verifier_drops(scores: list[float | None], reason: str) -> None:
    assert _select("verifier", [_sc(t, s) for t, s in enumerate(scores)]).reason == reason


def _answer(text: str) -> str | None:
    return text.split("answer:")[1].strip() if "answer:" in text else None


@pytest.mark.parametrize(
    ("texts", "turns", "reason"),
    [
        (["answer: 40", "answer: 42", "so answer: 42"], 2, ""),
        (["answer: 40", "answer: 41", "answer: 42"], 2, "inconsistent"),
        (["answer: 42", "answer: 42", "answer:42"], 2, "tie"),
        (["answer: 40", "no idea", "no idea"], 2, "inconsistent"),
        (["answer: 40", "answer: 42"], 3, "too_few_turns"),
        (["answer: 40"], 2, "single_candidate"),
        (["answer: 1", "answer: 42", "answer: 42", "answer: 42"], 3, ""),
    ],
)
def test_consistency(texts: list[str], turns: int, reason: str) -> None:
    scored = [_sc(t, None, text) for t, text in enumerate(texts)]
    sel = _select("consistency", scored, consistency_turns=turns, extract_answer=_answer)
    assert sel.reason == reason
    if not reason:
        assert _ids(sel) == (f"{P}/c0/t{len(texts) - 1}", f"{P}/c0/t0")


def test_consistency_default_answer_is_stripped_text() -> None:
    sel = _select("consistency", [_sc(0, None, "41"), _sc(1, None, " 42"), _sc(2, None, "42 ")])
    assert _ids(sel) == (f"{P}/c0/t2", f"{P}/c0/t0")


def test_braces_in_answers_survive_into_refine_prompts() -> None:
    sel = _select("rule", [_sc(0, None, "{answer} {0}"), _sc(1, None, "{x}")])
    assert sel.pairs[1].prompt == "Fix: What is 6*7? | was: {answer} {0} | new:"


def test_policy_version_is_the_chosen_candidates() -> None:
    sel = _select("reward", [_sc(0, 0.1, version=4), _sc(1, 0.9, version=7)])
    assert {p.policy_version for p in sel.pairs} == {7}


def test_empty_and_unknown_rule() -> None:
    assert _select("reward", []).reason == "no_candidates"
    with pytest.raises(ValueError, match="rule"):
        _select("longest", [_sc(0, 1.0), _sc(1, 0.0)])
