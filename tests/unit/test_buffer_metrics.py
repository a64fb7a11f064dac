"""The buffer's round metrics: computed from its own state (no scored candidate leaves the buffer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolve_ray.config import Config, replace
from evolve_ray.core.buffer import BufferState, RoundJournal
from evolve_ray.core.selection import select_pairs
from evolve_ray.driver.builders import buffer_args
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Candidate, Prompt, Score, ScoredCandidate

TEMPLATE = "Fix: {question} was {answer}"


def _select(prompt: Prompt, scored: list[ScoredCandidate]):
    return select_pairs(
        "reward",
        prompt.question,
        scored,
        template=TEMPLATE,
        round=0,
        min_margin=0.0,
        tie_tolerance=1e-6,
        keep_pairs=True,
        consistency_turns=2,
    )


def _round(tmp_path: Path, chains: dict[str, list[tuple[str, float, int]]]) -> BufferState:
    """A round whose prompts 'a+b=' each have one chain of (text, reward, tokens) per turn."""
    state = BufferState(0, RoundJournal(tmp_path / "journal"), _select)
    prompts = [Prompt(q, q, str(sum(map(int, q.rstrip("=").split("+"))))) for q in chains]
    state.add_prompts(prompts)
    for q, turns in chains.items():
        cands = [Candidate(q, 0, t, text, None, 0, 0, "chain", num_tokens=n) for t, (text, _, n) in enumerate(turns)]
        state.add_candidates(cands, [q])
        state.add_scores([Score.of(c.id, r) for c, (_, r, _) in zip(cands, turns, strict=True)])
    return state


def test_round_metrics_hand_values(tmp_path: Path) -> None:
    """1+1: '3' (wrong, reward -1) -> '2' (right, +2): fixed; the RM agrees on both.
    2+2: '4' (right, +1) -> '5' (wrong, +3): broken; the RM ranks the wrong one best, so the pair's
    chosen answer is wrong and the RM disagrees on '5'. Agreement 3/4; chosen wrong 1/2.
    Tokens: turn 0 (1 + 3) / 2 = 2, turn 1 (2 + 2) / 2 = 2. Reward mean (-1 + 2 + 1 + 3) / 4 = 1.25."""
    state = _round(tmp_path, {"1+1=": [("3", -1.0, 1), ("2", 2.0, 2)], "2+2=": [("4", 1.0, 3), ("5", 3.0, 2)]})
    task = ArithTask()
    m = state.round_metrics(tolerance=1e-6, verify=task.verify, reward_model=True)
    assert m["refine/turn_0_accuracy"] == 0.5 and m["refine/turn_1_accuracy"] == 0.5
    assert m["refine/acc_turn_1_improved_frac"] == 0.5 and m["refine/acc_turn_1_degraded_frac"] == 0.5
    assert m["score/rm_verifier_agreement"] == pytest.approx(0.75)
    assert m["pairs/chosen_wrong_frac"] == pytest.approx(0.5)
    assert m["gen/turn_0_mean_tokens"] == 2.0 and m["gen/turn_1_mean_tokens"] == 2.0
    assert m["score/reward_mean"] == pytest.approx(1.25)
    assert m["pairs/margin_mean"] == pytest.approx(((2.0 - -1.0) + (3.0 - 1.0)) / 2)
    assert m["refine/turn_1_improved_frac"] == 1.0  # both rewards went up
    assert m["pairs/count"] == 6.0  # direct, refine, keep for each prompt


def test_round_metrics_without_verifier_or_reward_model(tmp_path: Path) -> None:
    """A task without reference answers has no accuracy keys; verifier scores have no RM agreement."""
    state = _round(tmp_path, {"1+1=": [("3", 0.0, 1), ("2", 1.0, 1)]})
    plain = state.round_metrics(tolerance=1e-6, verify=None, reward_model=True)
    assert not [k for k in plain if "accuracy" in k or "agreement" in k or "chosen_wrong" in k]
    judged = state.round_metrics(tolerance=1e-6, verify=ArithTask().verify, reward_model=False)
    assert "score/rm_verifier_agreement" not in judged and judged["pairs/chosen_wrong_frac"] == 0.0


def test_buffer_args_hand_the_buffer_its_settings_as_plain_values(tmp_path: Path) -> None:
    """The buffer's part of the config and the task, as BufferActor takes them: the selection
    rule with the configured settings for any round, the task's checker, the tolerance."""
    cfg = replace(
        Config(),
        selection={"keep_pairs": False, "min_margin": 0.5},
        training={"gamma": 0.0},
        run={"unchanged_tolerance": 0.01},
    )
    task = ArithTask()
    args = buffer_args(cfg, tmp_path / "run", task)
    assert (args["run_dir"], args["tolerance"], args["reward_model"]) == (str(tmp_path / "run"), 0.01, True)
    assert args["verify"] == task.verify and args["log_level"] == cfg.run.log_level
    prompt = Prompt("1+1=", "1+1=", "2")
    cands = [Candidate("1+1=", 0, t, text, None, 0, 3, "chain") for t, text in enumerate(["3", "2"])]
    select = args["selector"](3)
    wide = select(prompt, [ScoredCandidate(c, s) for c, s in zip(cands, [0.0, 1.0], strict=True)])
    assert sorted(p.kind for p in wide.pairs) == ["direct", "refine"]  # no keep pair
    assert {p.round for p in wide.pairs} == {3}
    narrow = select(prompt, [ScoredCandidate(c, s) for c, s in zip(cands, [0.0, 0.4], strict=True)])
    assert narrow.reason == "below_margin" and not narrow.pairs
