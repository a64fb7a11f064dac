"""Per-turn refinement statistics from hand-written chains."""

from __future__ import annotations

import math

import pytest

from evolve_ray.core.stats import turn_stats


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
