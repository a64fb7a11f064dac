"""The warm start's recipe (`WarmStartSpec`, written to manifest.json), which of its fields each
shipped part depends on, and the validation prompts the build's stopping rules measure on.
Pure: no ray, no vllm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evolve_ray.config import DEMO_REFINE_TEMPLATE
from evolve_ray.models.tiny import TinySpec
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Prompt


@dataclass(frozen=True)
class WarmStartSpec:
    """Everything that decides the warm start's weights (written to manifest.json)."""

    policy: TinySpec = TinySpec(hidden=128, layers=2, heads=4, intermediate=256, max_positions=1024)
    template: str = DEMO_REFINE_TEMPLATE
    task_seed: int = 0
    train_prompts: int = 4800
    eval_prompts: int = 400
    seed: int = 0
    # Stage 1a: SR-aware SFT of a fresh policy on one schedule of `epochs` (synthetic errors). The
    # policy parts stop where greedy direct accuracy on the validation prompts first reaches
    # `stage_a_target` (checked every `stage_a_check` steps): the steep part of the learning curve
    # is crossed at a measured point, not at a guessed epoch. The teacher the reward model starts
    # from runs the whole schedule.
    sft: dict[str, Any] = field(
        default_factory=lambda: dict(
            loss="sft", lr=3e-3, lr_schedule="cosine", warmup_steps=20, batch_size=64, epochs=14, max_len=128
        )
    )
    stage_a_target: float = 0.5
    stage_a_check: int = 25
    keep_share: float = 0.0
    # Stage 1b: from that snapshot, SR-aware SFT that also teaches keeping a right answer and
    # fixing the model's own errors, at a constant learning rate, until two measured targets hold
    # on `val_prompts` round-split prompts (checked every `check_every` steps): greedy direct
    # accuracy >= `target_direct_accuracy`, and shown a correct answer, the refinement turn keeps
    # it >= `target_keep_rate` of the time. The stop is measured, so the warm start's skill does
    # not hinge on an epoch count; the direct target leaves the rounds room to improve (trained
    # on, the same recipe converges near 0.92).
    refine: dict[str, Any] = field(
        default_factory=lambda: dict(
            keep_share=0.5,
            own_share=0.5,
            lr=1e-3,
            target_direct_accuracy=0.78,
            target_keep_rate=0.85,
            check_every=10,
            max_epochs=3,
            val_prompts=300,
            val_offset=1310,
            seed=1,
        )
    )
    rm_epochs: int = 30
    rm_lr: float = 3e-4
    rm_batch: int = 32
    rm_wrong_per_prompt: int = 1
    # Harder negatives for the reward model: `rm_own_samples` temperature-1 answers per train prompt
    # drawn from the built policy; its distinct wrong ones replace a prompt's synthetic wrong sums
    # with probability `rm_own_share` each (data.reward_triples). 0 samples: synthetic only.
    rm_own_samples: int = 0
    rm_own_share: float = 1.0


# The spec fields each part's weights depend on (a part is kept only if its fields are unchanged).
_COMMON = ("policy", "template", "task_seed", "train_prompts", "seed", "sft")
PART_FIELDS = {
    "policy": (*_COMMON, "stage_a_target", "stage_a_check", "keep_share", "refine"),
    "policy_direct_only": (*_COMMON, "stage_a_target", "stage_a_check", "keep_share", "refine"),
    "reward": (
        *_COMMON,
        "eval_prompts",
        "rm_epochs",
        "rm_lr",
        "rm_batch",
        "rm_wrong_per_prompt",
        "rm_own_samples",
        "rm_own_share",
    ),
}
# Fields added after a shipped part was built, with the value that gives the recipe from before them
# (an older manifest that lacks one described a part built that way).
ADDED_FIELDS = {"rm_own_samples": 0, "rm_own_share": 1.0}
# With own negatives the reward model's data comes from the built policy, so it depends on its recipe.
_POLICY_ONLY = tuple(k for k in PART_FIELDS["policy"] if k not in PART_FIELDS["reward"])


def reward_fields(spec_now: dict[str, Any]) -> tuple[str, ...]:
    """The spec fields the reward part depends on: the policy's too when it learns from its answers."""
    return PART_FIELDS["reward"] + (_POLICY_ONLY if spec_now.get("rm_own_samples") else ())


def validation_prompts(spec: WarmStartSpec) -> list[Prompt]:
    """The warm start's stopping measurements use round-split prompts from the end of the split's
    order, never the evaluation split."""
    r = spec.refine
    return ArithTask(seed=spec.task_seed).prompts("round", r["val_prompts"], offset=r["val_offset"])
