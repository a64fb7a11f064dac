"""The paper's two stages for a user's model (driver): Stage 1, then the EVOLVE rounds.

    Stage 1   self-refinement-aware SFT on an offline preference set (sft.data): one "round" in
              RUN/sft whose collect stage reads the file's pairs instead of generating, trained by
              the same Ray Train group code as the rounds, with its held-out prompts evaluated per
              turn before and after (RUN/sft/report.md). Its checkpoint is RUN/sft/checkpoints/r000.
    Stage 2   the rounds (loop.py) in RUN, starting from that checkpoint (and, with
              training.reference=fixed, scored against it), when sft.data is set.

`evolve-ray sft` runs Stage 1 alone; `evolve-ray run` runs whatever of the two is not done yet,
so `sft` then `run` with the same config and --out continue one another. Both resume.

With LoRA (training.lora) Stage 1 trains an adapter; its checkpoint is then merged into the base
(in float32, cast to model.dtype) as RUN/sft/merged, and Stage 2 trains a new adapter on that:
its fixed reference, the base with the adapter off, is then the Stage-1 policy (as in TRL's
recipe for an SFT adapter followed by DPO).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evolve_ray.config import Config, dump_yaml, load_config, read_yaml, replace
from evolve_ray.driver import loop
from evolve_ray.driver.resume_settings import config_changes, plan_resume
from evolve_ray.driver.session import Session, Step
from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write, check_writable, checkpoint_dir, read_json, round_dir
from evolve_ray.tasks.preferences import PreferenceSet
from evolve_ray.types import to_row

log = logging.getLogger(__name__)

STAGE1_DIR = "sft"
# What shapes Stage 1's checkpoint: a finished Stage 1 is reused only when these are unchanged.
# (Collection and evaluation settings of Stage 2 may differ; they never touched it.)
STAGE1_KEYS = ("model.", "sft.", "training.", "refinement.template", "data.seed")
# ...except the training settings of Stage 2's losses and the trainer's resources, which Stage 1 never read.
STAGE2_ONLY = tuple(
    f"training.{k}"
    for k in ("beta", "alpha", "gamma", "direct_loss", "label_smoothing", "eta", "tau_ratio", "reference")
) + ("training.cpus_per_worker", "training.max_failures")


def stage1_config(cfg: Config, sft_dir: Path) -> Config:
    """Stage 1's settings: the SFT loss at sft.lr for sft.epochs, one "round", sft.eval_prompts held out."""
    return replace(
        cfg,
        training={"loss": "sft", "lr": cfg.sft.lr, "epochs": cfg.sft.epochs},
        data={"eval_prompts": cfg.sft.eval_prompts},
        run={"out": str(sft_dir), "rounds": 1, "eval_strategies": [], "eval_start": True},
    )


MERGED = "merged"  # RUN/sft/merged: a LoRA Stage 1's adapter merged into its base


def stage1_checkpoint(run_dir: Path) -> Path:
    """Where Stage 2 starts: Stage 1's checkpoint, or a LoRA Stage 1's merged policy."""
    merged = run_dir / STAGE1_DIR / MERGED
    return merged if merged.is_dir() else checkpoint_dir(run_dir / STAGE1_DIR, 0)


def _stage2_start(cfg: Config, run_dir: Path) -> Path:
    """Stage 1's policy for Stage 2; with LoRA its adapter merged into the base once (merge_adapter
    writes the directory whole or not at all)."""
    merged, trained = run_dir / STAGE1_DIR / MERGED, checkpoint_dir(run_dir / STAGE1_DIR, 0)
    if cfg.training.lora.rank and not merged.is_dir() and (trained / "adapter_config.json").is_file():
        from evolve_ray.models.lora import merge_adapter

        merge_adapter(trained, merged, dtype=cfg.model.dtype)
        log.info("Stage 1's adapter merged into its base for Stage 2: %s", merged)
    return stage1_checkpoint(run_dir)


def _pairs(s: Session) -> list[Any]:
    return s.task.pairs(s.cfg.refinement.template, max_rows=s.cfg.sft.max_rows)


def load_pairs(s: Session, round_: int) -> dict[str, Any]:
    """Stage 1's collect stage: the file's pairs, written to rounds/r000/pairs.jsonl for inspection."""
    pairs = _pairs(s)
    lines = "".join(json.dumps(to_row(p), ensure_ascii=False) + "\n" for p in pairs)
    atomic_write(round_dir(s.run, round_) / "pairs.jsonl", lines.encode())
    skipped = {f"data/skipped_{k}": float(v) for k, v in s.task.skipped.items()}
    held_out = len(s.task.prompts("eval", s.cfg.data.eval_prompts))
    return {"pairs/count": float(len(pairs)), "data/eval_prompts": float(held_out)} | skipped  # direct + refine


def train_pairs(s: Session, round_: int) -> dict[str, Any]:
    return loop.train_on(s, round_, _pairs(s))


STAGE1_STEPS: Sequence[Step] = (("collect", load_pairs), ("train", train_pairs), ("evaluate", loop.evaluate))


def run_stage1(cfg: Config, run_dir: Path) -> Path:
    """Stage 1 in RUN/sft, or what of it is not done yet; returns its checkpoint.

    A finished Stage 1 is reused only if it was made with the same settings: a changed one is
    refused in one line, naming the first setting that differs.
    """
    if not cfg.sft.data:
        raise UserError("sft.data is empty: name a preference file or hub dataset (--data or --set sft.data=...)")
    sft_dir = run_dir / STAGE1_DIR
    cfg1 = stage1_config(cfg, sft_dir)
    state: dict[str, Any] = {"last": None}
    if (sft_dir / "config.yaml").is_file():
        stored = load_config(None, base=read_yaml(sft_dir / "config.yaml"))
        for key, (old, new) in config_changes(stored, cfg1).items():
            if key.startswith(STAGE1_KEYS) and key not in STAGE2_ONLY:
                raise UserError(
                    f"{sft_dir} holds a Stage 1 made with {key}={old!r}, not {new!r}: "
                    "run with the same setting, or pick another --out"
                )
        if (sft_dir / "state.json").is_file():
            state = read_json(sft_dir / "state.json")
        if state.get("last") == {"round": 0, "stage": "evaluate"}:
            log.info("Stage 1 already done: %s", stage1_checkpoint(run_dir))
            return _stage2_start(cfg, run_dir)
    else:
        check_writable(sft_dir)
    atomic_write(sft_dir / "config.yaml", dump_yaml(cfg1).encode())
    task = PreferenceSet(cfg.sft.data, eval_prompts=cfg.sft.eval_prompts, seed=cfg.data.seed)
    notes = [f"Stage 1 (self-refinement-aware SFT) on {cfg.sft.data}: {len(task.train_rows)} training rows"]
    loop.drive(cfg1, sft_dir, state, notes, task=task, steps=STAGE1_STEPS)
    return _stage2_start(cfg, run_dir)


def run(cfg: Config) -> Path:
    """A new run in cfg.run.out: Stage 1 first when sft.data is set (or reused if `sft` made it), then the rounds."""
    run_dir = Path(cfg.run.out).resolve()
    if not cfg.sft.data:
        if (run_dir / STAGE1_DIR / "config.yaml").is_file():
            raise UserError(
                f"{run_dir / STAGE1_DIR} holds a Stage 1 but sft.data is empty, so the rounds would start from "
                "model.policy instead: set sft.data as `evolve-ray sft` had it, or pick another --out"
            )
        return loop.run(cfg)
    if (run_dir / "state.json").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {cfg.run.out} or pick another --out")
    check_writable(run_dir)
    atomic_write(run_dir / "config.yaml", dump_yaml(cfg).encode())  # a run stopped in Stage 1 resumes from it
    return loop.run(cfg, policy=str(run_stage1(cfg, run_dir)))


def resume_run(run_dir: Path, *, config: str | Path | None = None, sets: Sequence[str] = ()) -> Path:
    """Continue a run: Stage 1 where it stopped (if any), then the rounds."""
    plan = plan_resume(run_dir, config, sets)  # refuses a change before anything starts
    if not plan.cfg.sft.data:
        return loop.resume_run(run_dir, config=config, sets=sets)
    policy = str(run_stage1(plan.cfg, plan.run_dir))  # a no-op once Stage 1 is done
    return loop.resume_run(run_dir, config=config, sets=sets, policy=policy)


def run_sft(cfg: Config) -> Path:
    """`evolve-ray sft`: Stage 1 alone, in cfg.run.out/sft. Returns the Stage-1 directory."""
    run_dir = Path(cfg.run.out).resolve()
    run_stage1(cfg, run_dir)
    return run_dir / STAGE1_DIR
