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
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from evolve_ray.config import DEMO_REFINE_TEMPLATE, TrainingConfig
from evolve_ray.models.loading import load_policy, load_reward
from evolve_ray.models.tiny import TinySpec, build_policy, build_tokenizer, save
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Prompt
from evolve_ray.warmstart import PARTS, SHIPPED, STAGE_1A
from evolve_ray.warmstart.data import reward_rows, reward_triples, sft_pairs
from evolve_ray.warmstart.train import (
    chain_eval,
    direct_accuracy,
    generate,
    refinement_probe,
    reward_agreement,
    reward_on_samples,
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


def _sft_config(spec: WarmStartSpec, *, refine_weight: float) -> TrainingConfig:
    return TrainingConfig(**spec.sft, sft_refine_weight=refine_weight, seed=spec.seed)  # type: ignore[arg-type]


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
_ADDED = {"rm_own_samples": 0, "rm_own_share": 1.0}
# The reward model is also measured on this many temperature-1 answers of the policy per round-split
# validation prompt: the measurement settings are chosen by (never the evaluation split).
RM_CHECK_SAMPLES = 4
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


def sft_policy(spec: WarmStartSpec, *, refine_weight: float, full: bool) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Stage 1a: SR-aware SFT of a fresh policy (refine_weight 0: the direct-only baseline).

    full: run the whole schedule (the teacher); else stop at spec.stage_a_target.

    Returns:
        (model, {"steps": steps taken, "curve": [[steps, validation direct accuracy], ...]}).
    """
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    model = build_policy(spec.policy, tok)
    prompts = task.prompts("train", spec.train_prompts)
    val = validation_prompts(spec)
    pairs = sft_pairs(prompts, spec.template, seed=spec.seed, keep_share=spec.keep_share).pairs
    curve: list[list[float]] = []

    def reached(steps: int) -> bool:
        if full or steps % spec.stage_a_check:
            return False
        curve.append([steps, direct_accuracy(model, tok, task, val)])
        log.info("stage 1a: %d steps, validation direct accuracy %.3f", steps, curve[-1][1])
        model.train()
        return curve[-1][1] >= spec.stage_a_target

    history = train_sft(model, tok, pairs, _sft_config(spec, refine_weight=refine_weight), should_stop=reached)
    return model, {"steps": len(history), "curve": curve}


def own_wrong_answers(
    model: PreTrainedModel, tok, task: ArithTask, prompts: list[Prompt], seed: int, samples: int = 1
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


def refine_to_target(spec: WarmStartSpec, model: PreTrainedModel, *, refine_weight: float) -> dict[str, Any]:
    """Stage 1b (see WarmStartSpec.refine): train `model` in place until the measured target.

    refine_weight 0 gives the direct-only baseline the same stop rule (its refine examples are
    then unused). Returns the validation curve [(steps, direct accuracy)] and whether the target
    was reached within max_epochs.
    """
    r = spec.refine
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    prompts = task.prompts("train", spec.train_prompts)
    val = validation_prompts(spec)
    own = (
        {k: v[0] for k, v in own_wrong_answers(model, tok, task, prompts, r["seed"]).items()}
        if refine_weight > 0 and r["own_share"] > 0
        else {}
    )
    pairs = sft_pairs(
        prompts, spec.template, seed=r["seed"], keep_share=r["keep_share"], own_wrong=own, own_share=r["own_share"]
    )
    cfg = dataclasses.replace(
        _sft_config(spec, refine_weight=refine_weight),
        lr=r["lr"],
        lr_schedule="constant",
        warmup_steps=0,
        epochs=r["max_epochs"],
    )

    def measure(steps: int) -> dict[str, float]:
        point = {"steps": steps, "direct_accuracy": direct_accuracy(model, tok, task, val)}
        if refine_weight > 0:
            point["keep_rate"] = refinement_probe(model, tok, task, val, spec.template)["keep_rate"]
        model.train()
        return point

    def done(point: dict[str, float]) -> bool:
        keep_ok = refine_weight == 0 or point["keep_rate"] >= r["target_keep_rate"]
        return point["direct_accuracy"] >= r["target_direct_accuracy"] and keep_ok

    curve = [measure(0)]

    def reached(steps: int) -> bool:
        if steps % r["check_every"]:
            return False
        curve.append(measure(steps))
        log.info("stage 1b: %s", {k: round(v, 3) for k, v in curve[-1].items()})
        return done(curve[-1])

    if not done(curve[0]):
        train_sft(model, tok, pairs.pairs, cfg, should_stop=reached)
    model.eval()
    return {
        "curve": curve,
        "reached": done(curve[-1]),
        "own_wrong_answers": len(own),
        "error_kinds": pairs.error_kinds,
    }


def measure_policy(spec: WarmStartSpec, model: PreTrainedModel) -> dict[str, float]:
    task, tok = ArithTask(seed=spec.task_seed), build_tokenizer()
    prompts = task.prompts("eval", spec.eval_prompts)
    out = chain_eval(model.eval(), tok, task, prompts, spec.template, turns=3)
    return out | {f"probe/{k}": v for k, v in refinement_probe(model, tok, task, prompts, spec.template).items()}


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


def build_policy_part(spec: WarmStartSpec, out: Path, *, refine_weight: float, stage_1a: Path | None) -> dict[str, Any]:
    """Stage 1a (trained, or read from `stage_1a`) then 1b for one policy part, saved to `out`;
    its measurements for the manifest."""
    if stage_1a is None:
        model, stage_a = sft_policy(spec, refine_weight=refine_weight, full=False)
    else:
        model = load_policy(str(stage_1a / out.name))
        task = ArithTask(seed=spec.task_seed)
        accuracy = direct_accuracy(model, build_tokenizer(), task, validation_prompts(spec))
        stage_a = {"from": f"{stage_1a.name}/{out.name}", "direct_accuracy": accuracy}
    stage_b = refine_to_target(spec, model, refine_weight=refine_weight)
    save(model, build_tokenizer(), out)
    return {"stage_1a": stage_a, "stage_1b": stage_b} | measure_policy(spec, model)


def build_warm_start(
    out: str | Path,
    spec: WarmStartSpec = WarmStartSpec(),
    parts: tuple[str, ...] = PARTS,
    stage_1a: Path | None = None,
) -> dict[str, Any]:
    """Write the chosen parts of out/{policy, policy_direct_only, reward} and out/manifest.json.

    Parts not rebuilt keep their files and their entries in an existing manifest (whose spec must
    then match: a part is only ever described by the recipe that built it).
    """
    out = Path(out)
    t0 = time.perf_counter()
    old: dict[str, Any] | None = (
        json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None
    )
    kept = [p for p in PARTS if p not in parts]
    if kept and old is None:
        raise SystemExit(f"{out}: no manifest describes the parts not rebuilt ({', '.join(kept)}): rebuild every part")
    spec_now = json.loads(json.dumps(dataclasses.asdict(spec)))
    old_spec: dict[str, Any] = old["spec"] if old else {}
    for part in kept:
        fields = reward_fields(spec_now) if part == "reward" else PART_FIELDS[part]
        changed = [k for k in fields if old_spec.get(k, _ADDED.get(k)) != spec_now[k]]
        if changed:
            raise SystemExit(f"{part} was built with other {', '.join(changed)}: rebuild it too (--parts)")
    if "reward" in kept and "policy" in parts and spec.rm_own_samples > 0:
        raise SystemExit("reward learned from the policy's own answers: rebuild it with the policy (--parts)")
    old_measured: dict[str, Any] = old["measured"] if old else {}
    measured = {k: v for k, v in old_measured.items() if k in kept or k == "teacher"} if kept else {}
    if "policy" in parts:
        measured["policy"] = build_policy_part(spec, out / "policy", refine_weight=1.0, stage_1a=stage_1a)
    if "policy_direct_only" in parts:
        measured["policy_direct_only"] = build_policy_part(
            spec, out / "policy_direct_only", refine_weight=0.0, stage_1a=stage_1a
        )
    if "reward" in parts:
        teacher, _ = sft_policy(spec, refine_weight=1.0, full=True)
        measured["teacher"] = measure_policy(spec, teacher)
        measured["reward"] = train_reward_model(spec, teacher, out / "reward")
    elif "policy" in parts:  # the kept reward model, measured again on the new policy's samples
        measured["reward"] = old_measured["reward"] | reward_on_policy_samples(spec, out)
    measured["build_seconds"] = round(time.perf_counter() - t0, 1)
    manifest = {
        "stage_1a": "trained" if stage_1a is None else f"read from {stage_1a.name}/",
        "command": "python -m evolve_ray.warmstart.build"
        + ("" if set(parts) == set(PARTS) else " --parts " + ",".join(parts)),
        "spec": dataclasses.asdict(spec),
        "torch_threads": torch.get_num_threads(),
        "measured": measured,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evolve_ray.warmstart.build", description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(SHIPPED), help="output directory (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: byte-reproducible)")
    ap.add_argument(
        "--stage-1a",
        choices=["shipped", "train"],
        default="shipped",
        help="shipped: stage 1b starts from the shipped stage-1a snapshots (assets/warm_start/stage_1a); "
        "train: stage 1a trained from scratch to its validation target",
    )
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to rebuild (of {', '.join(PARTS)})"
    )
    args = ap.parse_args(argv)
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: choose among {', '.join(PARTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    manifest = build_warm_start(args.out, parts=parts, stage_1a=STAGE_1A if args.stage_1a == "shipped" else None)
    print(json.dumps(manifest["measured"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
