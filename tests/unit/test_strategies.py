"""Strategy planners: generation waves, resuming half-done prompts, and final-answer picking."""

from __future__ import annotations

import pytest

from evolve_ray.core.strategies import GenRequest, chain_grid, final_metrics, pick_final, pick_finals, plan_next
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Candidate, Prompt, ScoredCandidate, candidate_id

P = "p7"


def _cand(chain: int, turn: int, text: str = "", prompt_id: str = P) -> Candidate:
    parent = candidate_id(prompt_id, chain, turn - 1) if turn else None
    return Candidate(
        prompt_id, chain, turn, text or f"c{chain}t{turn}", parent, policy_version=3, round=1, strategy="test"
    )


def _sc(chain: int, turn: int, score: float | None, text: str = "") -> ScoredCandidate:
    return ScoredCandidate(_cand(chain, turn, text), score)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("direct", 1), ("parallel", 4), ("chain", 3), ("parallel_chain", 12), ("vote", 12)],
)
def test_grid_sizes(strategy: str, expected: int) -> None:
    chains, per_chain = chain_grid(strategy, num_samples=4, turns=2)  # type: ignore[arg-type]
    assert chains * per_chain == expected


@pytest.mark.parametrize(
    ("strategy", "waves"), [("direct", 1), ("parallel", 1), ("chain", 3), ("parallel_chain", 3), ("vote", 3)]
)
def test_planning_to_completion(strategy: str, waves: int) -> None:
    """Generate each wave as planned: parents always exist, the grid fills exactly, then nothing."""
    existing: list[Candidate] = []
    for _ in range(waves):
        reqs = plan_next(strategy, num_samples=3, turns=2, existing=existing, prompt_id=P)  # type: ignore[arg-type]
        assert reqs
        have = {c.id for c in existing}
        for r in reqs:
            assert (r.parent_id is None) == (r.turn == 0)
            assert r.parent_id is None or r.parent_id in have
        existing += [_cand(r.chain, r.turn) for r in reqs]
    assert plan_next(strategy, num_samples=3, turns=2, existing=existing, prompt_id=P) == []  # type: ignore[arg-type]
    assert len(existing) == len({c.id for c in existing})
    chains, per_chain = chain_grid(strategy, num_samples=3, turns=2)  # type: ignore[arg-type]
    assert len(existing) == chains * per_chain


def test_first_wave_of_chain_is_turn_zero_only() -> None:
    assert plan_next("chain", num_samples=5, turns=3, existing=[], prompt_id=P) == [GenRequest(P, 0, 0, None)]


def test_resume_from_partial_candidates() -> None:
    existing = [_cand(0, 0), _cand(1, 0), _cand(0, 1)]  # chain 0 at turn 1, chain 1 at turn 0, chain 2 none
    reqs = plan_next("parallel_chain", num_samples=3, turns=2, existing=existing, prompt_id=P)
    assert reqs == [
        GenRequest(P, 0, 2, f"{P}/c0/t1"),
        GenRequest(P, 1, 1, f"{P}/c1/t0"),
        GenRequest(P, 2, 0, None),
    ]


def test_parallel_ignores_turns_and_chain_ignores_samples() -> None:
    par = plan_next("parallel", num_samples=2, turns=4, existing=[_cand(0, 0), _cand(1, 0)], prompt_id=P)
    assert par == []
    assert plan_next("chain", num_samples=9, turns=1, existing=[_cand(0, 0)], prompt_id=P) == [
        GenRequest(P, 0, 1, f"{P}/c0/t0")
    ]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="other prompts"):
        plan_next("chain", num_samples=1, turns=1, existing=[_cand(0, 0, prompt_id="q")], prompt_id=P)
    with pytest.raises(ValueError, match="strategy"):
        plan_next("beam", num_samples=1, turns=1, existing=[], prompt_id=P)  # type: ignore[arg-type]


def test_pick_final_chain_and_direct_take_last_turn() -> None:
    scored = [_sc(0, 0, 0.9), _sc(0, 2, 0.1), _sc(0, 1, 0.5)]
    assert pick_final("chain", scored).id == f"{P}/c0/t2"
    assert pick_final("direct", [_sc(0, 0, None)]).id == f"{P}/c0/t0"


def test_pick_final_parallel_best_score_with_ties_and_invalid() -> None:
    scored = [_sc(0, 0, 0.2), _sc(1, 0, None), _sc(2, 0, 0.7), _sc(3, 0, 0.7), _sc(4, 0, float("nan"))]
    assert pick_final("parallel", scored).chain == 2
    assert pick_final("parallel", [_sc(0, 0, None), _sc(1, 0, None)]).chain == 0


def test_pick_final_parallel_chain_compares_finals_only() -> None:
    """Chain 1's turn 0 scores highest overall, but only finals compete."""
    scored = [_sc(0, 0, 0.1), _sc(0, 1, 0.6), _sc(1, 0, 0.99), _sc(1, 1, 0.3)]
    assert pick_final("parallel_chain", scored).id == f"{P}/c0/t1"


def test_pick_final_vote_majority_and_tie_break() -> None:
    def answer(text: str) -> str | None:
        return text.rsplit("=", 1)[1].strip() if "=" in text else None

    finals = [
        _sc(0, 1, None, "so = 3"),
        _sc(1, 1, None, "x = 4"),
        _sc(2, 1, None, "thus =4"),
        _sc(3, 1, None, "?"),
    ]
    turn0 = [_sc(c, 0, None, "= 3") for c in range(4)]  # earlier turns do not vote
    assert pick_final("vote", turn0 + finals, extract_answer=answer).chain == 1
    tie = [_sc(0, 0, None, "= 5"), _sc(1, 0, None, "= 6"), _sc(2, 0, None, "= 6"), _sc(3, 0, None, "= 5")]
    assert pick_final("vote", tie, extract_answer=answer).chain == 0
    # Default answer: the stripped text.
    assert pick_final("vote", [_sc(0, 0, None, "a"), _sc(1, 0, None, " b "), _sc(2, 0, None, "b")]).chain == 1


def _scored(prompt_id: str, chain: int, turn: int, text: str, score: float | None, tokens: int) -> ScoredCandidate:
    c = Candidate(prompt_id, chain, turn, text, None, policy_version=0, round=0, strategy="x", num_tokens=tokens)
    return ScoredCandidate(c, score)


def test_vote_takes_the_majority_where_the_first_chain_is_wrong_and_best_of_n_the_scorers_best() -> None:
    """One arithmetic prompt (2+3=5), 3 chains of 2 turns. Chain 0 ends on 6 (wrong, and the
    scorer's favourite), chains 1 and 2 end on 5: vote answers 5, best-of-N follows the scorer to 6,
    the plain chain keeps chain 0's final. Tokens: 6 responses of 2 tokens = 12 per prompt."""
    task = ArithTask()
    prompt = Prompt("p", "2+3=", "5")
    scored = [
        _scored("p", 0, 0, "5", 0.1, 2),
        _scored("p", 0, 1, "6", 0.9, 2),
        _scored("p", 1, 0, "4", 0.2, 2),
        _scored("p", 1, 1, "5", 0.4, 2),
        _scored("p", 2, 0, "5", 0.3, 2),
        _scored("p", 2, 1, "5", 0.5, 2),
    ]
    correct = {sc.candidate.id: task.verify(prompt, sc.candidate.text) for sc in scored}
    results = {}
    for strategy in ("chain", "parallel_chain", "vote"):
        picks = pick_finals(strategy, scored, extract_answer=task.extract_answer)  # type: ignore[arg-type]
        results[strategy] = (picks["p"].text, final_metrics(scored, picks, correct))
    assert results["vote"][0] == "5" and results["vote"][1]["final_accuracy"] == 1.0
    assert results["parallel_chain"][0] == "6" and results["parallel_chain"][1]["final_score"] == 0.9
    assert results["parallel_chain"][1]["final_accuracy"] == 0.0
    assert results["chain"][0] == "6"
    assert all(m["tokens_per_prompt"] == 12.0 for _, m in results.values())


def test_final_metrics_means_over_prompts_and_skips_invalid_scores() -> None:
    scored = [_scored("a", 0, 0, "1", None, 3), _scored("b", 0, 0, "2", 0.5, 5)]
    picks = pick_finals("direct", scored)
    m = final_metrics(scored, picks, {"a/c0/t0": True, "b/c0/t0": False})
    assert m == {"final_score": 0.5, "tokens_per_prompt": 4.0, "prompt_tokens_per_prompt": 0.0, "final_accuracy": 0.5}
    assert "final_accuracy" not in final_metrics(scored, picks, None)
    with pytest.raises(ValueError, match="no prompts"):
        final_metrics([], {}, None)
