"""Stage-1 data for the built-in addition task: realistic wrong answers, SFT pairs, RM rows.

The wrong answers y_l imitate what a small model gets wrong on addition (a dropped or invented
carry, a slipped digit, swapped digits), so Stage 1 teaches "look again and fix this kind of
error" rather than "replace garbage". Pure: standard library and the project's records.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from evolve_ray.core.refine import refine_user_turn
from evolve_ray.types import PreferencePair, Prompt

ERROR_KINDS = ("dropped_carry", "extra_carry", "units_slip", "tens_slip", "digit_swap", "digit_typo")


def operands(prompt: Prompt) -> tuple[int, int]:
    """(a, b) of an 'a+b=' question."""
    a, b = prompt.question.rstrip("=").split("+")
    return int(a), int(b)


def _no_carry_sum(a: int, b: int) -> int:
    """Column sums mod 10, as if every carry were forgotten: 47+38 -> 75."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def _swap(n: int, rng: random.Random) -> int:
    s = list(str(n))
    if len(s) < 2:
        return n
    i = rng.randrange(len(s) - 1)
    s[i], s[i + 1] = s[i + 1], s[i]
    return int("".join(s))


def _typo(n: int, rng: random.Random) -> int:
    s = list(str(n))
    i = rng.randrange(len(s))
    s[i] = str(rng.randrange(1 if i == 0 and len(s) > 1 else 0, 10))
    return int("".join(s))


_ERRORS: dict[str, Callable[[int, int, random.Random], int]] = {
    "dropped_carry": lambda a, b, rng: _no_carry_sum(a, b),
    "extra_carry": lambda a, b, rng: a + b + rng.choice((10, 100)),
    "units_slip": lambda a, b, rng: a + b + rng.choice((-1, 1)),
    "tens_slip": lambda a, b, rng: a + b + rng.choice((-10, 10)),
    "digit_swap": lambda a, b, rng: _swap(a + b, rng),
    "digit_typo": lambda a, b, rng: _typo(a + b, rng),
}


def wrong_answer(a: int, b: int, rng: random.Random) -> tuple[str, str]:
    """A plausible wrong sum of a+b and the kind of error that made it.

    Kinds are tried in a random order; one that happens to give the right (or a negative) sum
    is skipped (e.g. a dropped carry when there was no carry), and a +-1 slip is the fallback.

    Returns:
        (wrong answer text, error kind).
    """
    for kind in rng.sample(ERROR_KINDS, len(ERROR_KINDS)):
        value = _ERRORS[kind](a, b, rng)
        if value != a + b and value >= 0:
            return str(value), kind
    return str(a + b + 1), "units_slip"


@dataclass(frozen=True)
class SftPairs:
    """Stage-1 pairs: kind 'direct' under x and kind 'refine' under t(x, y_l), one each per prompt."""

    pairs: list[PreferencePair]
    error_kinds: dict[str, int]


def sft_pairs(
    prompts: list[Prompt],
    template: str,
    *,
    seed: int,
    keep_share: float = 0.0,
    own_wrong: dict[str, str] | None = None,
    own_share: float = 0.0,
) -> SftPairs:
    """Self-refinement-aware SFT pairs (Stage 1, docs/method.md): y_w = the correct sum, y_l = a wrong one.

    The refine context is the config's refinement template filled with (x, y_l). With
    probability `keep_share` the refine context shows the correct answer instead (t(x, y_w)), so
    the model also learns to keep a right answer; the loss is on y_w in both cases. Where the
    model's own wrong answer to a prompt is known (`own_wrong`), it replaces the synthetic y_l
    with probability `own_share`: the refinement turn then practises on the errors it will meet.

    Args:
        prompts: task prompts with reference answers.
        template: the refinement template ({question}, {answer}).
        seed: seeds the choice of errors.
        keep_share: share of refine contexts that show the correct answer.
        own_wrong: prompt id -> a wrong answer the model itself gave (None: synthetic errors only).
        own_share: share of the prompts in `own_wrong` whose y_l is the model's own answer.

    Returns:
        SftPairs with 2 pairs per prompt and a count of the error kinds used ("own" included).
    """
    rng = random.Random(f"sft/{seed}")
    out: list[PreferencePair] = []
    kinds: dict[str, int] = {}
    for p in prompts:
        a, b = operands(p)
        wrong, kind = wrong_answer(a, b, rng)
        if own_wrong and p.id in own_wrong and rng.random() < own_share:
            wrong, kind = own_wrong[p.id], "own"
        kinds[kind] = kinds.get(kind, 0) + 1
        assert p.answer is not None, f"prompt {p.id} has no reference answer"
        shown = p.answer if rng.random() < keep_share else wrong
        for kind_, prompt in (("direct", p.question), ("refine", refine_user_turn(template, p.question, shown))):
            out.append(_pair(p, kind_, prompt, wrong))
    return SftPairs(out, kinds)


def _pair(p: Prompt, kind: str, prompt: str, wrong: str) -> PreferencePair:
    assert p.answer is not None, f"prompt {p.id} has no reference answer"
    return PreferencePair(
        prompt_id=p.id,
        round=-1,
        kind=kind,  # type: ignore[arg-type]
        question=p.question,
        prompt=prompt,
        chosen=p.answer,
        rejected=wrong,
        chosen_id=f"{p.id}/gold",
        rejected_id=f"{p.id}/wrong",
        chosen_score=1.0,
        rejected_score=0.0,
        rule="stage1",
        policy_version=0,
    )


def reward_triples(
    prompts: list[Prompt],
    *,
    seed: int,
    wrong_per_prompt: int = 1,
    own_wrong: dict[str, list[str]] | None = None,
    own_share: float = 1.0,
) -> list[tuple[str, str, str]]:
    """Verifier-labelled (question, correct sum, wrong sum) triples for the reward model.

    Each prompt gets `wrong_per_prompt` triples. By default every wrong sum is a realistic
    synthetic one (`wrong_answer`). Where the policy's own wrong answers to a prompt are known
    (`own_wrong`), each of its triples takes the next of them instead (in turn, starting over when
    they run out) with probability `own_share`: hard negatives, the near misses the reward model
    will have to score on the policy's samples. Prompts without own answers draw from the seeded
    stream exactly as without `own_wrong`, so None (the default) gives the synthetic-only triples.

    Args:
        prompts: task prompts ('a+b=' questions).
        seed: seeds the choice of synthetic errors and of the own/synthetic draws.
        wrong_per_prompt: triples (negatives) per prompt.
        own_wrong: prompt id -> wrong answers the policy itself gave (the verifier calls each
            wrong; order kept, duplicates allowed); None or a missing id: synthetic only.
        own_share: probability that a triple of a prompt with own answers uses one.

    Returns:
        (question, correct sum, wrong answer) triples, prompt by prompt.
    """
    rng = random.Random(f"rm/{seed}")
    out: list[tuple[str, str, str]] = []
    for p in prompts:
        a, b = operands(p)
        own = (own_wrong or {}).get(p.id, [])
        used = 0
        for _ in range(wrong_per_prompt):
            wrong = wrong_answer(a, b, rng)[0]
            if own and rng.random() < own_share:
                wrong, used = own[used % len(own)], used + 1
            out.append((p.question, str(a + b), wrong))
    return out


def reward_rows(prompts: list[Prompt], *, seed: int) -> list[tuple[str, str, float]]:
    """(question, answer, label) rows, label 1 correct / 0 wrong: each prompt's correct sum and one
    realistic wrong sum (held-out agreement of the reward model is measured on these)."""
    rows: list[tuple[str, str, float]] = []
    for q, right, wrong in reward_triples(prompts, seed=seed):
        rows += [(q, right, 1.0), (q, wrong, 0.0)]
    return rows
