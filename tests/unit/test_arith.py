"""The built-in addition task: seeded prompts, disjoint splits, an exact verifier."""

from __future__ import annotations

import pytest

from evolve_ray.tasks.arith import SPLITS, ArithTask, split_of
from evolve_ray.types import Prompt


def test_prompts_are_deterministic_for_a_seed() -> None:
    a, b = ArithTask(seed=3), ArithTask(seed=3)
    for split in SPLITS:
        assert a.prompts(split, 20) == b.prompts(split, 20)
    assert ArithTask(seed=4).prompts("round", 20) != a.prompts("round", 20)
    assert a.prompts("train", 5, offset=5) == a.prompts("train", 10)[5:]  # offset continues the stream


def test_splits_are_disjoint() -> None:
    task = ArithTask(seed=0)
    questions = {split: [p.question for p in task.prompts(split, 300)] for split in SPLITS}
    for split, qs in questions.items():
        assert len(qs) == 300 and len(set(qs)) == 300  # no repeats within a split
        for q in qs:
            a, b = map(int, q.rstrip("=").split("+"))
            assert split_of(a, b) == split
    assert not set(questions["train"]) & set(questions["round"])
    assert not set(questions["train"]) & set(questions["eval"])
    assert not set(questions["round"]) & set(questions["eval"])


def test_verifier_accepts_every_reference_and_rejects_corruptions() -> None:
    task = ArithTask(seed=1)
    assert task.verifiable
    prompts = [p for split in SPLITS for p in task.prompts(split, 100)]
    for p in prompts:
        a, b = map(int, p.question.rstrip("=").split("+"))
        assert p.answer == str(a + b)
        assert task.verify(p, f"{p.question} carry the one: {p.answer}")
        assert not task.verify(p, f"{p.question} {int(p.answer) + 1}")
        assert not task.verify(p, f"{p.answer} then {int(p.answer) - 10}")  # the last number counts
    assert not task.verify(prompts[0], "no idea")
    assert not task.verify(Prompt(id="x", question="1+1=", answer=None), "2")
    with pytest.raises(ValueError, match="split must be one of"):
        task.prompts("test", 1)


def test_a_split_past_its_end_starts_again() -> None:
    """The round split holds 1610 problems; prompts past them reuse the order with new ids."""
    task = ArithTask(seed=0)
    assert task.size("round") == 1610
    tail = task.prompts("round", 20, offset=1600)
    head = task.prompts("round", 10)
    assert [p.question for p in tail[10:]] == [p.question for p in head]
    assert len({p.id for p in tail}) == 20 and tail[10].id == "round-001610"
