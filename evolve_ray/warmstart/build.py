"""Build the demo's warm start: a tiny policy brought to partial skill on the built-in addition
task by Stage 1 (self-refinement-aware SFT), the same recipe without the refinement term (the
"direct answers only" baseline), and a small reward model trained on verifier labels.

    python -m evolve_ray.warmstart.build evolve_ray/assets/warm_start

rebuilds the shipped checkpoints (seeded; one CPU thread by default, so a rerun on the same
kind of machine writes the same bytes). manifest.json records the spec, the refinement
template the policy was taught with, and the measured numbers. Pure torch: no ray, no vllm.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from evolve_ray.config import DEMO_REFINE_TEMPLATE, TrainingConfig
from evolve_ray.models.loading import load_policy
from evolve_ray.models.tiny import TinySpec, build_policy, build_tokenizer, save
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.warmstart import SHIPPED
from evolve_ray.warmstart.data import reward_rows, reward_triples, sft_pairs
from evolve_ray.warmstart.train import (
    chain_eval,
    generate,
    reward_agreement,
    reward_pair_accuracy,
    train_reward,
    train_sft,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStartSpec:
    """Everything that decides the warm start's weights (written to manifest.json)."""

    policy: TinySpec = TinySpec(hidden=128, layers=2, heads=4, intermediate=256, max_positions=1024)
    template: str = DEMO_REFINE_TEMPLATE
    task_seed: int = 0
    train_prompts: int = 4800
    eval_prompts: int = 400
    seed: int = 0
    # One SFT schedule of `epochs`; the warm start is its snapshot after `warm_epochs` (partial
    # skill), the end of the run is the teacher the reward model starts from.
    sft: dict[str, Any] = field(
        default_factory=lambda: dict(
            loss="sft", lr=3e-3, lr_schedule="cosine", warmup_steps=20, batch_size=64, epochs=14, max_len=128
        )
    )
    warm_epochs: int = 5
    keep_share: float = 0.0
    rm_epochs: int = 30
    rm_lr: float = 3e-4
    rm_batch: int = 32
    rm_wrong_per_prompt: int = 1


def _sft_config(spec: WarmStartSpec, *, refine_weight: float) -> TrainingConfig:
    return TrainingConfig(**spec.sft, sft_refine_weight=refine_weight, seed=spec.seed)  # type: ignore[arg-type]


def sft_policy(spec: WarmStartSpec, out: Path, *, refine_weight: float, full: bool) -> torch.nn.Module:
    """Stage-1 SFT of a fresh policy; its snapshot after spec.warm_epochs is saved to `out`.

    full: go on to the end of the schedule and return that model (the teacher); else stop.
    """
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    model = build_policy(spec.policy, tok)
    prompts = task.prompts("train", spec.train_prompts)
    pairs = sft_pairs(prompts, spec.template, seed=spec.seed, keep_share=spec.keep_share).pairs

    def snapshot(epoch: int) -> None:
        if epoch + 1 == spec.warm_epochs:
            save(model, tok, out)

    cfg = _sft_config(spec, refine_weight=refine_weight)
    train_sft(model, tok, pairs, cfg, stop_after=None if full else spec.warm_epochs, on_epoch=snapshot)
    return model


def measure_policy(spec: WarmStartSpec, model: torch.nn.Module) -> dict[str, float]:
    task = ArithTask(seed=spec.task_seed)
    prompts = task.prompts("eval", spec.eval_prompts)
    return chain_eval(model.eval(), build_tokenizer(), task, prompts, spec.template, turns=3)


def reward_from(teacher: torch.nn.Module, seed: int) -> torch.nn.Module:
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


def train_reward_model(spec: WarmStartSpec, teacher: torch.nn.Module, out: Path) -> dict[str, float]:
    """Train the reward model on verifier labels; agreement on held-out rows and policy samples."""
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    rm = reward_from(teacher, spec.seed + 1)
    triples = reward_triples(
        task.prompts("train", spec.train_prompts), seed=spec.seed, wrong_per_prompt=spec.rm_wrong_per_prompt
    )
    train_reward(rm, tok, triples, epochs=spec.rm_epochs, batch_size=spec.rm_batch, lr=spec.rm_lr, seed=spec.seed)
    save(rm, tok, out)
    prompts = task.prompts("eval", spec.eval_prompts)
    policy = load_policy(str(out.parent / "policy")).eval()
    samples = generate(policy, tok, [p.question for p in prompts], temperature=1.0, seed=spec.seed)
    on_samples = [(p.question, a, float(task.verify(p, a))) for p, a in zip(prompts, samples, strict=True)]
    return {
        "agreement_heldout": reward_agreement(rm, tok, reward_rows(prompts, seed=spec.seed + 1)),
        "pair_accuracy_heldout": reward_pair_accuracy(rm, tok, reward_triples(prompts, seed=spec.seed + 1)),
        "agreement_policy_samples": reward_agreement(rm, tok, on_samples),
        "policy_samples_correct": sum(y for _, _, y in on_samples) / len(on_samples),
    }


def build_warm_start(out: str | Path, spec: WarmStartSpec = WarmStartSpec()) -> dict[str, Any]:
    """Write out/{policy, policy_direct_only, reward} and out/manifest.json; return the manifest."""
    out = Path(out)
    t0 = time.perf_counter()
    teacher = sft_policy(spec, out / "policy", refine_weight=1.0, full=True)
    direct_only = sft_policy(spec, out / "policy_direct_only", refine_weight=0.0, full=False)
    measured = {
        "policy": measure_policy(spec, load_policy(str(out / "policy"))),
        "policy_direct_only": measure_policy(spec, direct_only),
        "teacher": measure_policy(spec, teacher),
        "reward": train_reward_model(spec, teacher, out / "reward"),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    manifest = {
        "command": "python -m evolve_ray.warmstart.build",
        "spec": dataclasses.asdict(spec),
        "torch_threads": torch.get_num_threads(),
        "measured": measured,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evolve_ray.warmstart.build", description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(SHIPPED), help="output directory (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: byte-reproducible)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    manifest = build_warm_start(args.out)
    print(json.dumps(manifest["measured"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
