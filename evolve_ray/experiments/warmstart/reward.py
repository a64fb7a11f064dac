"""The warm start's reward model: a sequence classifier on the teacher's backbone, trained on
verifier labels (synthetic wrong sums, and optionally the policy's own wrong answers), and how
it agrees with the verifier on the policy's own samples. Pure torch: no ray, no vllm."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from evolve_ray.experiments.warmstart.data import reward_rows, reward_triples
from evolve_ray.experiments.warmstart.spec import WarmStartSpec, validation_prompts
from evolve_ray.experiments.warmstart.train import (
    generate,
    own_wrong_answers,
    reward_agreement,
    reward_on_samples,
    reward_pair_accuracy,
    train_reward,
)
from evolve_ray.models.loading import load_policy, load_reward
from evolve_ray.models.tiny import build_tokenizer, save
from evolve_ray.tasks.arith import ArithTask

# The reward model is also measured on this many temperature-1 answers of the policy per round-split
# validation prompt: the measurement settings are chosen by (never the evaluation split).
RM_CHECK_SAMPLES = 4


def reward_from(teacher: PreTrainedModel, seed: int) -> PreTrainedModel:
    """A sequence classifier with the teacher's backbone and a fresh scalar head (as RLHF reward
    models start from an SFT model): it can check a sum only if its backbone can compute one."""
    config = copy.deepcopy(teacher.config)
    config.num_labels, config.architectures = 1, None
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_config(config)
    backbone = {k: v for k, v in teacher.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = rm.load_state_dict(backbone, strict=False)
    assert missing == ["score.weight"] and not unexpected, (missing, unexpected)
    return rm


def reward_training_triples(spec: WarmStartSpec, root: Path) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """The reward model's (question, correct, wrong) triples on the train prompts: synthetic wrong
    sums, and with spec.rm_own_samples > 0 also root/policy's own wrong answers (hard negatives).

    Returns:
        (triples, counts for the manifest: triples, own_wrong_answers harvested, own_prompts with
        at least one, own_negatives = triples whose wrong answer is one of that prompt's own).
    """
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    prompts = task.prompts("train", spec.train_prompts)
    own: dict[str, list[str]] = {}
    if spec.rm_own_samples > 0:
        policy = load_policy(str(root / "policy"))
        own = own_wrong_answers(policy, tok, task, prompts, spec.seed, samples=spec.rm_own_samples)
    triples = reward_triples(
        prompts, seed=spec.seed, wrong_per_prompt=spec.rm_wrong_per_prompt, own_wrong=own, own_share=spec.rm_own_share
    )
    per_prompt = [own.get(p.id, []) for p in prompts for _ in range(spec.rm_wrong_per_prompt)]
    return triples, {
        "triples": len(triples),
        "own_wrong_answers": sum(len(v) for v in own.values()),
        "own_prompts": len(own),
        "own_negatives": sum(w in mine for (_, _, w), mine in zip(triples, per_prompt, strict=True)),
    }


def train_reward_model(spec: WarmStartSpec, teacher: PreTrainedModel, out: Path) -> dict[str, float]:
    """Train the reward model on verifier labels (out.parent/policy must exist when it learns from the
    policy's answers); agreement on held-out rows and on policy samples."""
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    rm = reward_from(teacher, spec.seed + 1)
    triples, counts = reward_training_triples(spec, out.parent)
    train_reward(rm, tok, triples, epochs=spec.rm_epochs, batch_size=spec.rm_batch, lr=spec.rm_lr, seed=spec.seed)
    save(rm, tok, out)
    prompts = task.prompts("eval", spec.eval_prompts)
    return (
        {
            "agreement_heldout": reward_agreement(rm, tok, reward_rows(prompts, seed=spec.seed + 1)),
            "pair_accuracy_heldout": reward_pair_accuracy(rm, tok, reward_triples(prompts, seed=spec.seed + 1)),
        }
        | reward_on_policy_samples(spec, out.parent)
        | counts
    )


def reward_on_policy_samples(spec: WarmStartSpec, root: Path) -> dict[str, float]:
    """How often root/reward agrees with the verifier on root/policy's own sampled (temperature 1)
    answers: one per evaluation prompt, and RM_CHECK_SAMPLES per round-split validation prompt
    (`_round` keys: agreement, pair accuracy, how often its top pick is wrong; train.reward_on_samples)."""
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    prompts = task.prompts("eval", spec.eval_prompts)
    policy = load_policy(str(root / "policy")).eval()
    samples = generate(policy, tok, [p.question for p in prompts], temperature=1.0, seed=spec.seed)
    on_samples = [(p.question, a, float(task.verify(p, a))) for p, a in zip(prompts, samples, strict=True)]
    rm = load_reward(str(root / "reward"))
    val = validation_prompts(spec)
    drawn = [
        generate(policy, tok, [p.question for p in val], temperature=1.0, seed=spec.seed + i)
        for i in range(RM_CHECK_SAMPLES)
    ]
    on_round = reward_on_samples(rm, tok, task, val, [list(ys) for ys in zip(*drawn, strict=True)])
    return {
        "agreement_policy_samples": reward_agreement(rm, tok, on_samples),
        "policy_samples_correct": sum(y for _, _, y in on_samples) / len(on_samples),
        "agreement_policy_samples_round": on_round["agreement"],
        "pair_accuracy_policy_samples_round": on_round["pair_accuracy"],
        "top_pick_wrong_round": on_round["top_pick_wrong"],
        "policy_samples_correct_round": on_round["correct"],
    }
