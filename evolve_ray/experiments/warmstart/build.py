"""Build the demo's warm start: a tiny policy brought to partial skill on the built-in addition
task by Stage 1 (self-refinement-aware SFT), the same recipe without the refinement term (the
"direct answers only" baseline), and a small reward model trained on verifier labels.

    python -m evolve_ray.experiments.warmstart.build evolve_ray/assets/warm_start

rebuilds the shipped checkpoints (seeded; one CPU thread by default, so a rerun on the same
kind of machine writes the same bytes). manifest.json records the spec, the refinement
template the policy was taught with, and the measured numbers. Pure torch: no ray, no vllm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from evolve_ray.config import TrainingConfig
from evolve_ray.experiments.warmstart.data import sft_pairs
from evolve_ray.experiments.warmstart.reward import reward_on_policy_samples, train_reward_model
from evolve_ray.experiments.warmstart.spec import (
    ADDED_FIELDS,
    PART_FIELDS,
    WarmStartSpec,
    reward_fields,
    validation_prompts,
)
from evolve_ray.experiments.warmstart.train import (
    chain_eval,
    direct_accuracy,
    own_wrong_answers,
    refinement_probe,
    train_sft,
)
from evolve_ray.models.loading import load_policy
from evolve_ray.models.tiny import build_policy, build_tokenizer, save
from evolve_ray.models.warm_start import PARTS, SHIPPED, STAGE_1A
from evolve_ray.tasks.arith import ArithTask

log = logging.getLogger(__name__)
DEFAULT_SPEC = WarmStartSpec()  # the shipped recipe (a frozen dataclass: one shared instance)


def _sft_config(spec: WarmStartSpec, *, refine_weight: float) -> TrainingConfig:
    return TrainingConfig(**spec.sft, sft_refine_weight=refine_weight, seed=spec.seed)  # type: ignore[arg-type]


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
    spec: WarmStartSpec = DEFAULT_SPEC,
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
        changed = [k for k in fields if old_spec.get(k, ADDED_FIELDS.get(k)) != spec_now[k]]
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
        "command": "python -m evolve_ray.experiments.warmstart.build"
        + ("" if set(parts) == set(PARTS) else " --parts " + ",".join(parts)),
        "spec": dataclasses.asdict(spec),
        "torch_threads": torch.get_num_threads(),
        "measured": measured,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m evolve_ray.experiments.warmstart.build", description=__doc__.splitlines()[0]
    )
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
