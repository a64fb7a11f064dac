"""Preference pairs built by hand for tests: one builder instead of one per test module."""

from __future__ import annotations

from evolve_ray.config import RefinementConfig
from evolve_ray.core.refine import refine_user_turn
from evolve_ray.types import PairKind, PreferencePair


def make_pair(
    prompt_id: str,
    kind: PairKind,
    *,
    question: str = "What is 2+2?",
    prompt: str | None = None,
    chosen: str = "4",
    rejected: str = "five",
    round_: int = 0,
) -> PreferencePair:
    """A pair whose chosen answer is chain 0's turn 1 (score 1) and rejected its turn 0 (score 0)."""
    return PreferencePair(
        prompt_id=prompt_id,
        round=round_,
        kind=kind,
        question=question,
        prompt=question if prompt is None else prompt,
        chosen=chosen,
        rejected=rejected,
        chosen_id=f"{prompt_id}/c0/t1",
        rejected_id=f"{prompt_id}/c0/t0",
        chosen_score=1.0,
        rejected_score=0.0,
        rule="reward",
        policy_version=round_,
    )


def fact_pairs(
    facts: list[tuple[str, str, str]], *, template: str = RefinementConfig().template, round_: int = 0
) -> list[PreferencePair]:
    """A direct, a refine and a keep pair per (question, right answer, wrong answer), prompts p0,
    p1, ... (every kind the default evolve loss needs: its keep term is weighted by default)."""
    prompts = {
        "direct": lambda q, good, bad: q,
        "refine": lambda q, good, bad: refine_user_turn(template, q, bad),
        "keep": lambda q, good, bad: refine_user_turn(template, q, good),
    }
    return [
        make_pair(f"p{i}", kind, question=q, prompt=prompt(q, good, bad), chosen=good, rejected=bad, round_=round_)
        for i, (q, good, bad) in enumerate(facts)
        for kind, prompt in prompts.items()
    ]
