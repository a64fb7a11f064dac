"""Per-turn refinement statistics from hand-written chains."""

from __future__ import annotations

import dataclasses
import math

import pytest

from evolve_ray.core.stats import accuracy_stats, reward_vs_verifier, turn_lengths, turn_stats
from evolve_ray.types import Candidate


def test_turn_stats_hand_values() -> None:
    """Turn means skip missing: t0 (0.1+0.4)/2 = 0.25, t1 (0.5+0.2+0.3)/3 = 1/3, t2 (0.5+0.6)/2 = 0.55.
    t0->t1 over a, b (c lacks t0): a up, b down. t1->t2 over a, c (b lacks t2): a same, c up."""
    stats = turn_stats({"a": [0.1, 0.5, 0.5], "b": [0.4, 0.2, None], "c": [None, 0.3, 0.6]}, tolerance=0.01)
    assert stats == pytest.approx(
        {
            "turn_0_score": 0.25,
            "turn_1_score": 1 / 3,
            "turn_2_score": 0.55,
            "turn_1_improved_frac": 0.5,
            "turn_1_unchanged_frac": 0.0,
            "turn_1_degraded_frac": 0.5,
            "turn_2_improved_frac": 0.5,
            "turn_2_unchanged_frac": 0.5,
            "turn_2_degraded_frac": 0.0,
        }
    )
    assert all(type(v) is float for v in stats.values())


def test_tolerance_boundary_counts_as_unchanged() -> None:
    stats = turn_stats({"a": [0.5, 0.75], "b": [0.5, 0.25], "c": [0.5, 0.8]}, tolerance=0.25)
    assert stats["turn_1_unchanged_frac"] == pytest.approx(2 / 3)
    assert stats["turn_1_improved_frac"] == pytest.approx(1 / 3)


def test_nan_and_missing_keys_are_left_out() -> None:
    stats = turn_stats({"a": [math.nan, 1.0], "b": [None, 2.0, 3.0]}, tolerance=0.0)
    assert stats == {
        "turn_1_score": 1.5,
        "turn_2_score": 3.0,
        "turn_2_improved_frac": 1.0,
        "turn_2_unchanged_frac": 0.0,
        "turn_2_degraded_frac": 0.0,
    }
    assert turn_stats({}, tolerance=0.0) == {}
    assert all(math.isfinite(v) for v in stats.values())


def _cand(prompt: str, turn: int, text: str, tokens: int, chain: int = 0) -> Candidate:
    return Candidate(prompt, chain, turn, text, None, 0, 0, "chain", num_tokens=tokens)


def test_accuracy_stats_count_fixed_and_broken_answers() -> None:
    """p: wrong -> right (fixed at turn 1); q: right -> wrong (broken); r: right -> right.
    Turn 0 accuracy 2/3, turn 1 2/3; turn 1 improved 1/3, degraded 1/3. Chain 1 is not followed."""
    cands = [
        _cand("p", 0, "1", 1),
        _cand("p", 1, "2", 1),
        _cand("q", 0, "3", 1),
        _cand("q", 1, "4", 1),
        _cand("r", 0, "5", 1),
        _cand("r", 1, "5", 1),
        _cand("r", 0, "9", 1, chain=1),
    ]
    right = {"p/c0/t1", "q/c0/t0", "r/c0/t0", "r/c0/t1"}
    correct = {c.id: float(c.id in right) for c in cands}
    stats = accuracy_stats(cands, correct)
    assert stats["turn_0_accuracy"] == pytest.approx(2 / 3) and stats["turn_1_accuracy"] == pytest.approx(2 / 3)
    assert stats["acc_turn_1_improved_frac"] == pytest.approx(1 / 3)
    assert stats["acc_turn_1_degraded_frac"] == pytest.approx(1 / 3)
    assert stats["acc_turn_1_unchanged_frac"] == pytest.approx(1 / 3)


def test_turn_lengths_average_tokens_per_turn() -> None:
    """Turn 0: (2 + 4) / 2 = 3 tokens; turn 1: 6. One response of three stopped at the token cap."""
    cands = [_cand("p", 0, "a", 2), _cand("q", 0, "b", 4), _cand("p", 1, "c", 6)]
    cands[2] = dataclasses.replace(cands[2], finish_reason="length")
    assert turn_lengths(cands) == {"turn_0_mean_tokens": 3.0, "turn_1_mean_tokens": 6.0, "cut_frac": 1 / 3}


def test_reward_vs_verifier_agreement_and_wrong_chosen() -> None:
    """a: +1.2, right (agree); b: -0.3, wrong (agree); c: +0.4, wrong (disagree); d: no score (skipped).
    Agreement 2/3. Chosen a (right) and c (wrong): half the chosen answers are wrong."""
    scores = {"a": 1.2, "b": -0.3, "c": 0.4, "d": None}
    correct = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}
    out = reward_vs_verifier(scores, correct, ["a", "c"])
    assert out == pytest.approx({"rm_verifier_agreement": 2 / 3, "chosen_wrong_frac": 0.5})
    assert math.isnan(reward_vs_verifier({}, {}, [])["chosen_wrong_frac"])
