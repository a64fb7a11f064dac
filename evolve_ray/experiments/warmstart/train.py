"""Stage-1 training in one process: SR-aware SFT of the policy, training of the reward model,
and the greedy per-turn evaluation used to check both. Pure torch (no ray, no vllm).

The SFT step is the product's: `train.batching.build_examples` encodes the pairs and
`train.step.term_logps` / `compute_loss` give the `training.loss=sft` objective
-(w_d logp(y_w | x) + w_r logp(y_w | t(x, y_l))), so Stage 1 and the Ray trainer share one path.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor
from transformers import PreTrainedModel

from evolve_ray.config import TrainingConfig
from evolve_ray.core.logprobs import pad_rows
from evolve_ray.core.refine import chat_prompt_ids, refine_user_turn
from evolve_ray.core.stats import turn_stats
from evolve_ray.engines.scoring import conversation_ids
from evolve_ray.train.batching import build_examples, epoch_order, loss_terms
from evolve_ray.train.step import build_optimizer, compute_loss, term_logps
from evolve_ray.types import PreferencePair, Prompt

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
MAX_NEW_TOKENS = 8  # per answer: the demo's sums need 4 with EOS (generation.max_new_tokens' default)
GENERATE_BATCH = 128  # user turns per generate() call


def train_sft(
    model: PreTrainedModel,
    tokenizer,
    pairs: Sequence[PreferencePair],
    cfg: TrainingConfig,
    *,
    should_stop: Callable[[int], bool] | None = None,
) -> list[dict[str, float]]:
    """Self-refinement-aware SFT (cfg.loss must be 'sft'): cfg.epochs passes in cfg.batch_size steps.

    Args:
        should_stop: called with the number of steps taken after each step; True ends training
            there (a measured target reached).

    Returns:
        One metrics dict per optimizer step (train/loss, train/nll_direct, train/nll_refine).
    """
    if cfg.loss != "sft":
        raise ValueError(f"train_sft needs training.loss=sft, got {cfg.loss!r}")
    examples = build_examples(pairs, tokenizer, cfg)
    terms = loss_terms(cfg)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    opt, sched = build_optimizer(model, cfg, steps_per_epoch * cfg.epochs)
    torch.manual_seed(cfg.seed)
    model.train()
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        order = epoch_order(len(examples), seed=cfg.seed, round=0, epoch=epoch)
        for start in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[start : start + cfg.batch_size]]
            pi = term_logps(model, batch, terms, cfg, pad_id=tokenizer.pad_token_id, device=CPU)
            per_example, metrics = compute_loss(cfg, terms, pi)
            per_example.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append({"train/loss": per_example.mean().item()} | {f"train/{k}": v for k, v in metrics.items()})
            if should_stop is not None and should_stop(len(history)):
                model.eval()
                return history
        log.info("sft epoch %d: %s", epoch, {k: round(v, 3) for k, v in history[-1].items()})
    model.eval()
    return history


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer,
    user_turns: list[str],
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """One response per user turn (greedy when temperature is 0), in batches with left padding."""
    torch.manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(user_turns), GENERATE_BATCH):
        turns = user_turns[i : i + GENERATE_BATCH]
        ids, mask = pad_rows([chat_prompt_ids(tokenizer, u) for u in turns], tokenizer.pad_token_id, left=True)
        sample = temperature > 0
        # generate() comes from GenerationMixin, which PreTrainedModel's stubs don't show.
        gen = cast(Any, model).generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=None,
            top_k=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.extend(tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True))
    return out


def chain_eval(
    model: PreTrainedModel, tokenizer, task, prompts: list[Prompt], template: str, *, turns: int
) -> dict[str, float]:
    """Greedy chain y0 ~ pi(.|x), y_k ~ pi(.|t(x, y_{k-1})): verifier accuracy per turn and shares.

    Returns:
        eval/turn_{k}_accuracy and eval/acc_turn_{k}_{improved,unchanged,degraded}_frac, as the
        round loop's evaluate stage names them.
    """
    answers = [generate(model, tokenizer, [p.question for p in prompts])]
    for _ in range(turns):
        refine = [refine_user_turn(template, p.question, y) for p, y in zip(prompts, answers[-1], strict=True)]
        answers.append(generate(model, tokenizer, refine))
    correct = {p.id: [float(task.verify(p, turn[i])) for turn in answers] for i, p in enumerate(prompts)}
    stats = turn_stats(correct, tolerance=0.5)
    out = {f"eval/{k.replace('_score', '_accuracy')}": v for k, v in stats.items() if k.endswith("_score")}
    out |= {f"eval/acc_{k}": v for k, v in stats.items() if not k.endswith("_score")}
    return out


def direct_accuracy(model: PreTrainedModel, tokenizer, task, prompts: list[Prompt]) -> float:
    """Verifier accuracy of greedy direct answers (the warm start's stopping measurement)."""
    answers = generate(model.eval(), tokenizer, [p.question for p in prompts])
    return sum(task.verify(p, a) for p, a in zip(prompts, answers, strict=True)) / len(prompts)


def refinement_probe(model: PreTrainedModel, tokenizer, task, prompts: list[Prompt], template: str) -> dict[str, float]:
    """How the refinement turn behaves, in the two cases that matter.

    Returns:
        keep_rate: shown the correct answer as the example, the share it keeps correct;
        fix_rate: of the prompts whose own greedy answer is wrong, the share turn 1 fixes;
        break_rate: of the prompts whose own greedy answer is right, the share turn 1 breaks.
    """
    model.eval()
    kept = generate(model, tokenizer, [refine_user_turn(template, p.question, p.answer or "") for p in prompts])
    own = generate(model, tokenizer, [p.question for p in prompts])
    turn1 = generate(
        model, tokenizer, [refine_user_turn(template, p.question, y) for p, y in zip(prompts, own, strict=True)]
    )
    right = [task.verify(p, y) for p, y in zip(prompts, own, strict=True)]
    after = [task.verify(p, y) for p, y in zip(prompts, turn1, strict=True)]
    wrong_n, right_n = right.count(False), right.count(True)
    return {
        "keep_rate": sum(task.verify(p, y) for p, y in zip(prompts, kept, strict=True)) / len(prompts),
        "fix_rate": sum(a for r, a in zip(right, after, strict=True) if not r) / wrong_n if wrong_n else float("nan"),
        "break_rate": sum(not a for r, a in zip(right, after, strict=True) if r) / right_n if right_n else float("nan"),
    }


# ----------------------------------------------------------------------------------------------
# Reward model: sequence classification on [user: x, assistant: y], label 1 correct / 0 wrong.


def reward_logits(model: PreTrainedModel, tokenizer, rows: Sequence[tuple[str, str]]) -> Tensor:
    """[N] scalar logits of (question, answer) conversations, right-padded as the scorer does."""
    ids, mask = pad_rows([conversation_ids(tokenizer, q, a) for q, a in rows], tokenizer.pad_token_id)
    return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def reward_loss(correct: Tensor, wrong: Tensor) -> Tensor:
    """Bradley-Terry on the pair plus BCE on each side (labels 1 / 0), per pair.

    BT alone fixes only differences (enough for picking best vs worst of a prompt); the BCE
    terms anchor the logit's sign to the verifier, so `reward_agreement` can use 0 as threshold.

    Args:
        correct, wrong: [B] logits of the correct and the wrong answer to the same question.

    Returns:
        [B] -log sigmoid(c - w) + (softplus(-c) + softplus(w)) / 2.
    """
    bt = -torch.nn.functional.logsigmoid(correct - wrong)
    return bt + 0.5 * (torch.nn.functional.softplus(-correct) + torch.nn.functional.softplus(wrong))


def train_reward(
    model: PreTrainedModel,
    tokenizer,
    triples: Sequence[tuple[str, str, str]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Train on verifier-labelled (question, correct, wrong) triples with `reward_loss`; the learning
    rate decays linearly to 0. Returns the loss of every step."""
    torch.manual_seed(seed)
    total = epochs * math.ceil(len(triples) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
    model.train()
    losses: list[float] = []
    rng = random.Random(seed)
    for epoch in range(epochs):
        order = list(range(len(triples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [triples[i] for i in order[start : start + batch_size]]
            logits = reward_logits(model, tokenizer, [(q, c) for q, c, _ in batch] + [(q, w) for q, _, w in batch])
            loss = reward_loss(logits[: len(batch)], logits[len(batch) :]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        log.info("reward epoch %d: loss %.4f", epoch, sum(losses[-50:]) / len(losses[-50:]))
    model.eval()
    return losses


@torch.no_grad()
def reward_agreement(model: PreTrainedModel, tokenizer, rows: Sequence[tuple[str, str, float]]) -> float:
    """Share of rows where the reward model's sign (logit > 0) matches the verifier label."""
    model.eval()
    hits = 0
    for i in range(0, len(rows), 256):
        chunk = rows[i : i + 256]
        logits = reward_logits(model, tokenizer, [(q, a) for q, a, _ in chunk])
        hits += sum(int((z > 0) == (y > 0.5)) for z, (_, _, y) in zip(logits.tolist(), chunk, strict=True))
    return hits / len(rows)


@torch.no_grad()
def reward_pair_accuracy(model: PreTrainedModel, tokenizer, triples: Sequence[tuple[str, str, str]]) -> float:
    """Share of (question, correct, wrong) triples where the correct answer scores higher."""
    model.eval()
    hits = 0
    for i in range(0, len(triples), 128):
        chunk = triples[i : i + 128]
        z = reward_logits(model, tokenizer, [(q, c) for q, c, _ in chunk] + [(q, w) for q, _, w in chunk])
        hits += int((z[: len(chunk)] > z[len(chunk) :]).sum())
    return hits / len(triples)


@torch.no_grad()
def reward_on_samples(
    model: PreTrainedModel, tokenizer, task, prompts: list[Prompt], samples: list[list[str]]
) -> dict[str, float]:
    """How the reward model judges a policy's own answers, against the verifier.

    Args:
        prompts: the prompts the answers were sampled for.
        samples: per prompt, its sampled answers (any number; repeats allowed).

    Returns:
        agreement: share of answers where the logit's sign matches the verifier;
        pair_accuracy: over each prompt's (right, wrong) pairs of distinct answers, the share
            where the right one scores higher;
        top_pick_wrong: of the prompts with both right and wrong answers, the share whose
            highest-scored answer is wrong (a reward-chosen pair's chosen answer would be);
        correct: share of answers the verifier calls right.
    """
    rows = [(p, y.strip()) for p, ys in zip(prompts, samples, strict=True) for y in ys]
    logits: list[float] = []
    for i in range(0, len(rows), 256):
        logits += reward_logits(model.eval(), tokenizer, [(p.question, y) for p, y in rows[i : i + 256]]).tolist()
    right = [task.verify(p, y) for p, y in rows]
    by_prompt: dict[str, dict[str, tuple[float, bool]]] = {}
    for (p, y), z, r in zip(rows, logits, right, strict=True):
        by_prompt.setdefault(p.id, {})[y] = (z, r)
    pairs = picks = picked_wrong = 0
    pair_hits = 0
    for scored in by_prompt.values():
        good = [z for z, r in scored.values() if r]
        bad = [z for z, r in scored.values() if not r]
        pairs += len(good) * len(bad)
        pair_hits += sum(g > b for g in good for b in bad)
        if good and bad:
            picks += 1
            picked_wrong += int(max(bad) >= max(good))
    return {
        "agreement": sum((z > 0) == r for z, r in zip(logits, right, strict=True)) / len(rows),
        "pair_accuracy": pair_hits / pairs if pairs else float("nan"),
        "top_pick_wrong": picked_wrong / picks if picks else float("nan"),
        "correct": sum(right) / len(rows),
    }


def own_wrong_answers(
    model: PreTrainedModel, tok, task, prompts: list[Prompt], seed: int, samples: int = 1
) -> dict[str, list[str]]:
    """prompt id -> the model's distinct wrong, non-empty answers among `samples` sampled ones
    (temperature 1; sample i seeded seed + i), in the order first drawn; prompts without one are left out."""
    out: dict[str, list[str]] = {}
    for i in range(samples):
        drawn = generate(model.eval(), tok, [p.question for p in prompts], temperature=1.0, seed=seed + i)
        for p, y in zip(prompts, drawn, strict=True):
            wrong = out.setdefault(p.id, [])
            if y.strip() and not task.verify(p, y) and y.strip() not in wrong:
                wrong.append(y.strip())
    return {k: v for k, v in out.items() if v}
