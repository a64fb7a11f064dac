"""The strategy comparison a reviewer would accept: best-of-N picked by a reward model, never the
answer key (whose pick is reported as pass@N, under its own name), cost counted in prompt and
generated tokens, N and K matched to a token budget, and the temperature of every figure."""

from __future__ import annotations

import json

import pytest

from evolve_ray.config import ConfigError, best_of_n_unpicked, load_config
from evolve_ray.core.strategies import budget_grid, estimated_cost, final_metrics, match_budget, turn_costs
from evolve_ray.reporting.strategy_study import StrategyRun, picked_figures, plan_comparison
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Candidate, Prompt, ScoredCandidate

from .cli_helpers import assert_one_line_error, run_cli

TASK = ArithTask()
PROMPT = Prompt("p", "2+3=", "5")


def _cand(chain: int, turn: int, text: str, *, prompt_tokens: int = 0, tokens: int = 0, pid: str = "p") -> Candidate:
    return Candidate(pid, chain, turn, text, None, 0, 0, "x", num_tokens=tokens, prompt_tokens=prompt_tokens)


# ----------------------------------------------------------------------------------------------
# Best-of-N: the reward model picks, the verifier grades


def test_best_of_n_is_picked_by_the_reward_model_and_pass_at_n_is_its_own_figure() -> None:
    """Three answers to 2+3: only chain 1's is right (the verifier scores it 1), but the reward
    model prefers chain 0's. Best-of-N follows the reward model (accuracy 0); pass@3, what the
    answer key's pick would score, is 1, reported as final_oracle_accuracy, not as the accuracy."""
    cands = [_cand(0, 0, "6"), _cand(1, 0, "5"), _cand(2, 0, "4")]
    verifier = {c.id: float(TASK.verify(PROMPT, c.text)) for c in cands}
    reward = {"p/c0/t0": 0.9, "p/c1/t0": 0.2, "p/c2/t0": 0.1}
    correct = {c.id: TASK.verify(PROMPT, c.text) for c in cands}
    run = StrategyRun("parallel", 3, 0, 0.7)
    picks, m = picked_figures(run, cands, scores=verifier, pick_scores=reward, correct=correct)
    assert picks["p"].text == "6"
    assert m["final_accuracy"] == 0.0 and m["final_oracle_accuracy"] == 1.0
    assert m["final_score"] == 0.0  # the verifier's grade of the pick
    # Without the reward model's scores the pick is chain 0 (ties: lowest chain), never the verifier's best.
    picks, _ = picked_figures(run, cands, scores=verifier, pick_scores={}, correct=correct)
    assert picks["p"].chain == 0


def test_pass_at_n_counts_chain_finals_only_and_one_chain_has_none() -> None:
    """parallel_chain, 2 chains of 2 turns: chain 1 was right at turn 0 and broke it at turn 1, so
    no final is right: pass@2 = 0. A single chain reports no pass@N (it would equal its accuracy)."""
    cands = [_cand(0, 0, "4"), _cand(0, 1, "6"), _cand(1, 0, "5"), _cand(1, 1, "7")]
    correct = {c.id: TASK.verify(PROMPT, c.text) for c in cands}
    _, m = picked_figures(StrategyRun("parallel_chain", 2, 1, 0.7), cands, scores={}, pick_scores={}, correct=correct)
    assert m["final_oracle_accuracy"] == 0.0
    _, m = picked_figures(StrategyRun("chain", 1, 1, 0.0), cands[:2], scores={}, pick_scores={}, correct=correct)
    assert "final_oracle_accuracy" not in m


def test_best_of_n_without_a_reward_model_is_refused() -> None:
    """Under scoring.kind=verifier on a file task with no model.reward there is nothing honest to
    pick with: best-of-N is refused (run.eval_strategies here; `evolve-ray eval` the same way)."""
    file_task = ["scoring.kind=verifier", "data.task=file", "data.path=gsm8k.jsonl"]
    with pytest.raises(ConfigError, match=r"^run\.eval_strategies: strategy parallel picks the best of N answers"):
        load_config(None, [*file_task, "run.eval_strategies=[chain,parallel]"])
    cfg = load_config(None, [*file_task, "run.eval_strategies=[chain,vote]"])  # no best-of-N: fine
    assert best_of_n_unpicked(cfg, ["parallel_chain"]) is not None
    assert best_of_n_unpicked(load_config(None, [*file_task, "model.reward=/rm"]), ["parallel"]) is None
    assert best_of_n_unpicked(load_config(None, ["scoring.kind=verifier"]), ["parallel"]) is None  # built-in RM


# ----------------------------------------------------------------------------------------------
# Cost and the budget


def test_costs_count_prompt_tokens_and_a_refinement_reads_the_question_again() -> None:
    """A first answer: 9 prompt + 3 generated = 12 tokens; a refinement turn: 80 + 3 = 83."""
    cands = [
        _cand(0, 0, "5", prompt_tokens=9, tokens=3),
        _cand(0, 1, "5", prompt_tokens=80, tokens=3),
        _cand(0, 2, "5", prompt_tokens=80, tokens=3),
    ]
    assert turn_costs(cands) == (12.0, 83.0)
    picks = {"p": cands[-1]}
    m = final_metrics([ScoredCandidate(c, None) for c in cands], picks, None)
    assert (m["tokens_per_prompt"], m["prompt_tokens_per_prompt"]) == (9.0, 169.0)
    with pytest.raises(ValueError, match="refinement turns"):
        turn_costs(cands[:1])


def test_estimated_cost_of_each_grid() -> None:
    """chains x (first + K x refine), first 12, refine 80."""
    cost = {s: estimated_cost(s, 4, 2, first=12, refine=80) for s in ("direct", "parallel", "chain", "vote")}
    assert cost == {"direct": 12, "parallel": 48, "chain": 172, "vote": 688}


def test_match_budget_picks_the_closest_grid_point_per_strategy() -> None:
    """Budget 200 tokens, a first answer 12, a refinement 80: parallel N=17 (204; N=16 is 192),
    chain K=2 (172; K=3 is 252), parallel_chain and vote N=2 K=1 (184; N=3 K=1 is 276), direct
    its one point (12)."""
    got = {
        s: match_budget(s, 200, first=12, refine=80, preferred_turns=3)
        for s in ("direct", "parallel", "chain", "parallel_chain", "vote")
    }
    assert got == {"direct": (1, 0), "parallel": (17, 0), "chain": (1, 2), "parallel_chain": (2, 1), "vote": (2, 1)}


def test_match_budget_ties_go_to_the_preferred_turns_then_fewer_chains() -> None:
    """first = refine = 10, budget 60: parallel_chain (3, 1) and (2, 2) both cost exactly 60."""
    assert match_budget("parallel_chain", 60, first=10, refine=10, preferred_turns=2) == (2, 2)
    assert match_budget("parallel_chain", 60, first=10, refine=10, preferred_turns=1) == (3, 1)


def test_the_grid_keeps_each_strategy_itself() -> None:
    assert min(n for n, _ in budget_grid("parallel")) == 2  # N=1 would be direct
    assert min(k for _, k in budget_grid("chain")) == 1  # K=0 would be direct
    assert match_budget("parallel", 1, first=12, refine=80, preferred_turns=3) == (2, 0)  # the smallest point


# ----------------------------------------------------------------------------------------------
# What each strategy runs with


def test_plan_without_a_budget_uses_the_configured_grid_and_temperatures() -> None:
    cfg = load_config(
        None,
        [
            "run.eval_strategies=[direct,chain,parallel,vote]",
            "run.eval_num_samples=6",
            "run.eval_turns=2",
            "run.eval_temperatures={vote: 1.0, chain: 0.7}",
        ],
    )
    assert plan_comparison(cfg) == [
        StrategyRun("direct", 1, 0, 0.0),  # one chain: greedy unless told otherwise
        StrategyRun("chain", 1, 2, 0.7),  # sampled, as asked
        StrategyRun("parallel", 6, 0, 0.7),  # several: generation.temperature
        StrategyRun("vote", 6, 2, 1.0),
    ]


def test_plan_with_a_budget_matches_n_and_k() -> None:
    cfg = load_config(None, ["run.eval_strategies=[chain,parallel,vote]", "run.eval_budget_tokens=200"])
    assert plan_comparison(cfg, (12.0, 80.0)) == [
        StrategyRun("chain", 1, 2, 0.0),
        StrategyRun("parallel", 17, 0, 0.7),
        StrategyRun("vote", 2, 1, 0.7),
    ]
    with pytest.raises(ValueError, match="turn costs"):
        plan_comparison(cfg)


# ----------------------------------------------------------------------------------------------
# `evolve-ray eval`: the same rules, one line each


def test_eval_flags_the_strategy_would_drop_are_refused(tmp_path) -> None:
    out = ["--model", str(tmp_path / "m"), "--out", str(tmp_path / "eval")]
    r = run_cli("eval", *out, "--strategy", "chain", "--num-samples", "4")
    assert_one_line_error(r, "--num-samples is set but --strategy chain runs one chain; remove it")
    r = run_cli("eval", *out, "--strategy", "parallel", "--turns", "2")
    assert_one_line_error(r, "--turns is set but --strategy parallel does not refine; remove it")


def test_eval_best_of_n_with_only_a_verifier_is_refused(tmp_path) -> None:
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(4)))
    r = run_cli(
        "eval", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "eval"), "--data", str(data),
        "--strategy", "parallel_chain", "--set", "scoring.kind=verifier", "--set", "data.eval_prompts=2",
    )  # fmt: skip
    assert_one_line_error(
        r, "strategy parallel_chain picks the best of N answers with a reward model, and there is none"
    )
