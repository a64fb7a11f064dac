"""Pair selection: how one prompt's scored candidates become preference pairs (docs/method.md).

Each rule picks one (y_w, y_l) or says why not; from it come a direct pair (x; y_w; y_l), a
refine pair (t(x, y_l); y_w; y_l) and, optionally, a keep pair (t(x, y_w); y_w; y_l).
Tie-breaks are deterministic: chosen prefers the latest turn, rejected the earliest turn, and
among equal turns the lowest chain, mirroring the expectation that refinement helps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from evolve_ray.core.refine import refine_user_turn
from evolve_ray.types import PairKind, PreferencePair, ScoredCandidate

SelectionRule = Literal["reward", "rule", "verifier", "consistency"]
AnswerFn = Callable[[str], str | None]

# A verifier score at or above this counts as correct (verifiers emit 1.0 / 0.0).
VERIFIER_CORRECT = 0.5


@dataclass(frozen=True)
class Selection:
    """The pairs of one prompt, or why there are none, and how many invalid scores were dropped."""

    pairs: tuple[PreferencePair, ...]
    reason: str
    dropped_invalid: int


def _value(sc: ScoredCandidate) -> float:
    """The score as a float, NaN when missing."""
    return math.nan if sc.score is None else sc.score


def _valid(sc: ScoredCandidate) -> bool:
    return math.isfinite(_value(sc))


def _latest(cands: list[ScoredCandidate]) -> ScoredCandidate:
    """The latest turn, lowest chain among equal turns."""
    return min(cands, key=lambda sc: (-sc.candidate.turn, sc.candidate.chain))


def _earliest(cands: list[ScoredCandidate]) -> ScoredCandidate:
    """The earliest turn, lowest chain among equal turns."""
    return min(cands, key=lambda sc: (sc.candidate.turn, sc.candidate.chain))


Pick = tuple[ScoredCandidate, ScoredCandidate] | str  # (chosen, rejected) or a reason


def _pick_reward(
    valid: list[ScoredCandidate], *, min_margin: float, tie_tolerance: float, min_chosen_score: float | None
) -> Pick:
    if len(valid) < 2:
        return "single_candidate"
    hi = max(_value(sc) for sc in valid)
    lo = min(_value(sc) for sc in valid)
    if hi - lo <= tie_tolerance:
        return "tie"
    if hi - lo <= min_margin:
        return "below_margin"
    if min_chosen_score is not None and hi <= min_chosen_score:
        return "chosen_below_floor"  # no candidate good enough to train towards
    chosen = _latest([sc for sc in valid if _value(sc) == hi])
    rejected = _earliest([sc for sc in valid if _value(sc) == lo])
    return (chosen, rejected) if chosen.candidate.text != rejected.candidate.text else "tie"


def _pick_verifier(valid: list[ScoredCandidate]) -> Pick:
    if len(valid) < 2:
        return "single_candidate"
    correct = [sc for sc in valid if _value(sc) >= VERIFIER_CORRECT]
    wrong = [sc for sc in valid if _value(sc) < VERIFIER_CORRECT]
    if not correct:
        return "all_incorrect"
    if not wrong:
        return "all_correct"
    return _latest(correct), _earliest(wrong)


def _chain0(scored: list[ScoredCandidate]) -> list[ScoredCandidate]:
    return sorted((sc for sc in scored if sc.candidate.chain == 0), key=lambda sc: sc.candidate.turn)


def _pick_rule(scored: list[ScoredCandidate]) -> Pick:
    chain = _chain0(scored)
    if len(chain) < 2:
        return "single_candidate"
    chosen, rejected = chain[-1], chain[0]
    return (chosen, rejected) if chosen.candidate.text != rejected.candidate.text else "tie"


def _pick_consistency(scored: list[ScoredCandidate], *, turns: int, extract: AnswerFn) -> Pick:
    chain = _chain0(scored)
    if len(chain) < 2:
        return "single_candidate"
    if len(chain) < turns:
        return "too_few_turns"
    final = {extract(sc.candidate.text) for sc in chain[-turns:]}
    if len(final) != 1 or None in final:
        return "inconsistent"
    if extract(chain[0].candidate.text) in final:
        return "tie"
    return chain[-1], chain[0]


def _score_or_none(sc: ScoredCandidate) -> float | None:
    return sc.score if _valid(sc) else None


def _pairs(
    question: str,
    chosen: ScoredCandidate,
    rejected: ScoredCandidate,
    *,
    template: str,
    round: int,
    rule: str,
    keep_pairs: bool,
) -> tuple[PreferencePair, ...]:
    """Direct, refine and (optionally) keep pairs from one (x, y_w, y_l)."""
    win, lose = chosen.candidate, rejected.candidate
    prompts: dict[PairKind, str] = {
        "direct": question,
        "refine": refine_user_turn(template, question, lose.text),
    }
    if keep_pairs:
        prompts["keep"] = refine_user_turn(template, question, win.text)
    return tuple(
        PreferencePair(
            prompt_id=win.prompt_id,
            round=round,
            kind=kind,
            question=question,
            prompt=prompt,
            chosen=win.text,
            rejected=lose.text,
            chosen_id=win.id,
            rejected_id=lose.id,
            chosen_score=_score_or_none(chosen),
            rejected_score=_score_or_none(rejected),
            rule=rule,
            policy_version=win.policy_version,
            chosen_cut=win.finish_reason == "length",
            rejected_cut=lose.finish_reason == "length",
        )
        for kind, prompt in prompts.items()
    )


def select_pairs(
    rule: SelectionRule,
    question: str,
    scored: list[ScoredCandidate],
    *,
    template: str,
    round: int,
    min_margin: float,
    tie_tolerance: float,
    keep_pairs: bool,
    consistency_turns: int,
    extract_answer: AnswerFn | None = None,
    min_chosen_score: float | None = None,
) -> Selection:
    """Preference pairs of one prompt under a selection rule.

    reward: chosen = argmax, rejected = argmin of the valid scores; dropped as "tie" when the
    spread is within tie_tolerance, "below_margin" when it is at or below min_margin, and
    "chosen_below_floor" when even the best score is at or below min_chosen_score (if set).
    rule: chain 0's last turn over its turn 0, no scorer. verifier: a correct candidate (latest
    turn) over an incorrect one (earliest turn). consistency: chain 0's last `consistency_turns`
    answers must agree, and its turn 0 answer must differ; chosen = last turn, rejected = turn 0.
    Scores of None or non-finite are dropped and counted by the scoring rules (reward,
    verifier); rule and consistency ignore scores and copy valid ones into the pairs.

    Args:
        rule: the selection rule.
        question: the prompt x.
        scored: the prompt's candidates with their scores.
        template: the refinement template for refine / keep prompts.
        round: the EVOLVE round the pairs belong to.
        min_margin: reward rule's minimum best-worst margin (exclusive).
        tie_tolerance: spreads at or below this are ties.
        keep_pairs: also emit the keep pair.
        consistency_turns: consistency rule's number of final turns that must agree.
        extract_answer: maps a response to its answer (consistency); default the stripped text.
        min_chosen_score: reward rule's floor for the chosen score (None: no floor).

    Returns:
        Selection with the pairs ("" reason) or no pairs and a reason.
    """
    if not scored:
        return Selection((), "no_candidates", 0)
    dropped = 0
    if rule in ("reward", "verifier"):
        valid = [sc for sc in scored if _valid(sc)]
        dropped = len(scored) - len(valid)
        if not valid:
            return Selection((), "no_valid_scores", dropped)
        if rule == "reward":
            pick = _pick_reward(
                valid, min_margin=min_margin, tie_tolerance=tie_tolerance, min_chosen_score=min_chosen_score
            )
        else:
            pick = _pick_verifier(valid)
    elif rule == "rule":
        pick = _pick_rule(scored)
    elif rule == "consistency":
        pick = _pick_consistency(scored, turns=consistency_turns, extract=extract_answer or str.strip)
    else:
        raise ValueError(f"rule: {rule!r} is not one of reward, rule, verifier, consistency")
    if isinstance(pick, str):
        return Selection((), pick, dropped)
    chosen, rejected = pick
    pairs = _pairs(question, chosen, rejected, template=template, round=round, rule=rule, keep_pairs=keep_pairs)
    return Selection(pairs, "", dropped)
