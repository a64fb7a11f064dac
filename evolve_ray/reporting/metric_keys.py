"""What every report key means, once: report.md's glossary reads it (docs/architecture.md lists the keys).

Keys are `<stage>/<quantity>`; `k` stands for a refinement turn (0 = the direct answer) and
`<reason>` for a counter's reason. Pure: no ray, no vllm.
"""

from __future__ import annotations

import re

# (pattern shown to the reader, meaning). Order matters where patterns overlap: first match wins.
GLOSSARY: tuple[tuple[str, str], ...] = (
    ("eval/turn_k_accuracy", "held-out share answered correctly at turn k (the verifier's verdict)"),
    ("eval/turn_k_score", "held-out mean reward-model score at turn k"),
    ("eval/turn_k_mean_tokens", "held-out mean response length at turn k (tokens): length drift"),
    ("eval/cut_frac", "share of the held-out responses stopped at generation.max_new_tokens, not at EOS"),
    ("eval/acc_turn_k_improved_frac", "share of held-out prompts turn k fixed (wrong at k-1, right at k)"),
    ("eval/acc_turn_k_degraded_frac", "share of held-out prompts turn k broke (right at k-1, wrong at k)"),
    ("eval/acc_turn_k_unchanged_frac", "share of held-out prompts whose correctness turn k kept"),
    ("eval/turn_k_improved_frac", "share of held-out prompts whose score rose from turn k-1 to k"),
    ("eval/turn_k_degraded_frac", "share of held-out prompts whose score fell from turn k-1 to k"),
    ("eval/turn_k_unchanged_frac", "share of held-out prompts whose score stayed within the tie tolerance"),
    ("eval/final_accuracy", "share of prompts whose picked final answer is right (best-of-N: a reward model picks)"),
    (
        "eval/final_oracle_accuracy",
        "pass@N: share of prompts where one of the N final answers is right (the answer key's pick: an oracle)",
    ),
    ("eval/final_score", "mean score of the picked final answers"),
    ("eval/tokens_per_prompt", "every generated token per prompt (all chains and turns)"),
    ("eval/prompt_tokens_per_prompt", "every prompt token read per prompt (a refinement turn re-reads x and y_k-1)"),
    ("strategy/budget_tokens", "run.eval_budget_tokens: tokens processed per prompt each strategy's N and K matched"),
    ("strategy/<name>_num_samples", "run.eval_strategies: N, the strategy's chains"),
    ("strategy/<name>_turns", "run.eval_strategies: K, refinement turns per chain"),
    ("strategy/<name>_temperature", "run.eval_strategies: the strategy's sampling temperature (0: greedy)"),
    (
        "strategy/<name>_oracle_accuracy",
        "run.eval_strategies: pass@N, share of prompts with a right answer among the N finals (oracle, not a pick)",
    ),
    (
        "strategy/<name>_accuracy",
        "run.eval_strategies: share of prompts the strategy's picked answer gets right (best-of-N: a reward model "
        "picks)",
    ),
    ("strategy/<name>_score", "run.eval_strategies: mean score of the strategy's picked answers"),
    ("strategy/<name>_prompt_tokens_per_prompt", "run.eval_strategies: the strategy's prompt tokens read per prompt"),
    ("strategy/<name>_tokens_per_prompt", "run.eval_strategies: the strategy's generated tokens per prompt"),
    ("eval/direct_score", "held-out mean score of the direct answer (= eval/turn_0_score)"),
    ("eval/prompts", "held-out prompts evaluated"),
    ("eval/tokens", "tokens generated during evaluation"),
    ("refine/turn_k_score", "mean score at turn k of the round's collected chains"),
    ("refine/turn_k_improved_frac", "share of the round's chains whose score rose from turn k-1 to k"),
    ("refine/turn_k_degraded_frac", "share of the round's chains whose score fell from turn k-1 to k"),
    ("refine/turn_k_unchanged_frac", "share of the round's chains whose score stayed within the tie tolerance"),
    ("refine/turn_k_accuracy", "share of the round's collected chains right at turn k (the verifier's verdict)"),
    ("refine/acc_turn_k_improved_frac", "share of the round's chains turn k fixed (wrong at k-1, right at k)"),
    ("refine/acc_turn_k_degraded_frac", "share of the round's chains turn k broke (right at k-1, wrong at k)"),
    ("refine/acc_turn_k_unchanged_frac", "share of the round's chains whose correctness turn k kept"),
    ("refine/improved_frac", "refine/turn_k_improved_frac averaged over turns"),
    ("refine/degraded_frac", "refine/turn_k_degraded_frac averaged over turns"),
    ("gen/prompts", "prompts drawn for the round"),
    ("gen/turn_k_mean_tokens", "mean response length at turn k of the round's collected chains (tokens)"),
    (
        "gen/cut_frac",
        "share of the round's responses stopped at generation.max_new_tokens, not at EOS (trained without one)",
    ),
    ("gen/tokens", "tokens generated while collecting"),
    ("gen/tokens_per_s", "collection throughput: tokens over the slowest generator's seconds"),
    ("gen/batches", "batches of prompts the generators pulled from the buffer"),
    ("fleet/generators", "generators in the fleet after the stage (evolve-ray scale changes it)"),
    ("fleet/scorers", "scorers in the fleet after the stage (evolve-ray scale changes it)"),
    ("gen/backend_vllm", "1 when the generators run vLLM, 0 for the transformers backend"),
    ("gen/skipped_<reason>", "refinement turns skipped (e.g. a prompt over the context length)"),
    ("gen/truncated_refine_prompts", "refinement prompts whose previous answer was cut in the middle to fit"),
    ("score/reward_mean", "mean score of the round's candidates"),
    ("score/busy_s", "seconds the scorers spent scoring, summed"),
    ("score/rm_verifier_agreement", "share of candidates where the reward model's sign agrees with the verifier"),
    ("score/invalid", "scores that were NaN or inf (never selected)"),
    ("score/invalid_<reason>", "invalid scores by kind (nan, inf)"),
    ("buffer/prompts", "prompts the buffer held this round"),
    ("buffer/candidates", "candidates the buffer held this round"),
    ("buffer/decided", "prompts whose chain was complete, scored and turned into pairs (or dropped)"),
    ("pairs/count", "preference pairs collected (all kinds)"),
    ("pairs/prompts_with_pairs", "prompts that gave at least one pair"),
    ("pairs/margin_mean", "mean score margin chosen - rejected of the direct pairs"),
    ("pairs/chosen_wrong_frac", "share of pairs whose chosen answer the verifier calls wrong"),
    ("pairs/dropped_<reason>", "prompts that gave no pair, by reason (tie, below_margin, ...)"),
    ("data/eval_prompts", "Stage 1: prompts of the preference file held out for evaluation"),
    ("data/skipped_<reason>", "Stage 1: rows of the preference file skipped, by reason (invalid_json, ...)"),
    ("train/loss", "mean training loss over the round's steps"),
    ("train/loss_first", "loss of the round's first step"),
    ("train/loss_last", "loss of the round's last step"),
    ("train/direct_loss", "EVOLVE's direct term (DPO or IPO on direct pairs)"),
    ("train/refine_loss", "EVOLVE's refinement term"),
    ("train/keep_loss", "EVOLVE's keep term"),
    ("train/reward_acc", "share of pairs whose implicit reward ranks chosen above rejected"),
    ("train/refine_acc", "train/reward_acc of the refinement pairs"),
    ("train/margin_mean", "mean implicit-reward margin chosen - rejected"),
    ("train/refine_margin", "train/margin_mean of the refinement pairs"),
    ("train/keep_margin", "train/margin_mean of the keep pairs"),
    ("train/chosen_reward", "mean implicit reward beta * (log pi - log pi_ref) of chosen answers"),
    ("train/rejected_reward", "mean implicit reward of rejected answers"),
    ("train/inpo_h", "INPO's h term"),
    ("train/nll_direct", "sft: negative log-likelihood of chosen direct answers"),
    ("train/nll_refine", "sft: negative log-likelihood of chosen refinements"),
    ("train/grad_norm", "gradient norm before clipping (last step)"),
    ("train/lr", "learning rate at the last step"),
    ("train/steps", "optimizer steps"),
    ("train/examples", "pairs trained on"),
    ("train/cut_examples", "examples longer than training.max_len: their prompt's start (then response's end) cut"),
    ("train/seconds", "seconds of optimisation"),
    ("train/save_seconds", "seconds writing the checkpoint"),
    ("train/first_step_delay_s", "seconds from the round's pairs to the first optimizer step"),
    ("train/frozen_logps_seconds", "seconds computing reference log-probs before the first step"),
    ("train/ref_chosen_logp", "mean reference log-prob of chosen direct answers (which reference was used)"),
    ("train/skipped", "1 when the round had no pairs and training was skipped"),
    ("train/resumed", "1 when a restarted worker group had already finished the round"),
    ("sync/seconds", "seconds pushing the new weights into every generator"),
    ("sync/generators_lost", "generators gone during the push (replaced before evaluation)"),
    ("sync/generators_reached", "generators that serve the new weights after the push"),
    ("policy/version", "policy version the generators serve after the round"),
    ("fault/generator_restarts", "generators replaced during the round"),
    ("fault/scorer_restarts", "scorers replaced during the round"),
    ("time/collect_s", "seconds of the collect stage"),
    ("time/train_s", "seconds of the train stage (training, checkpoint, weight push)"),
    ("time/evaluate_s", "seconds of the evaluate stage"),
    ("time/round_s", "seconds of the whole round"),
)


def _regex(pattern: str) -> re.Pattern[str]:
    body = (
        re.escape(pattern)
        .replace("turn_k", r"turn_\d+")
        .replace("<reason>", r"[a-z0-9_]+")
        .replace("<name>", r"[a-z_]+")
    )
    return re.compile(f"^{body}$")


_COMPILED = [(_regex(p), p, meaning) for p, meaning in GLOSSARY]


def explain(key: str) -> tuple[str, str] | None:
    """(pattern, meaning) of a report key, or None for a key the glossary lacks."""
    for regex, pattern, meaning in _COMPILED:
        if regex.match(key):
            return pattern, meaning
    return None


def glossary_for(keys: list[str]) -> list[tuple[str, str]]:
    """The glossary entries of `keys`, each pattern once, in glossary order."""
    seen = {explain(k) for k in keys} - {None}
    return [(p, m) for p, m in GLOSSARY if (p, m) in seen]
