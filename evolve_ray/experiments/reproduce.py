"""`evolve-ray reproduce`: the paper's comparison at demo scale, N seeds, through the product path.

Round-based arms run `loop.run` with their config overrides, without the start evaluation (every
one starts from the warm start, whose evaluation is the sr_sft arm's); the SFT arms are evaluated
with `loop.eval_model`. An arm that chooses its own learning rate first runs seed `seeds[0]` at each
value of the grid and keeps the one with the best `comparison.lr_criterion` (round prompts only);
that run is its seed-`seeds[0]` result, and the other seeds run at the chosen value. Every
arm-seed result is written to ARM[/lrX]/seedN/row.json as soon as it exists, so rerunning with the
same --out skips what is done. The table logic is in evolve_ray.experiments.comparison. With
`docs_page`, the page's `reproduce` block (evolve_ray.reporting.docs_page) is checked before any
arm runs and then replaced by reproduce.md, under a line naming the command.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import ray

from evolve_ray.config import DEMO_SETS, load_config, overrides_of
from evolve_ray.driver import loop
from evolve_ray.errors import UserError
from evolve_ray.experiments.comparison import (
    LR_GRID,
    SMOKE_SETS,
    TURNS,
    Arm,
    aggregate,
    arms,
    lr_criterion,
    markdown,
    plot,
    row_from_metrics,
    seed_sets,
)
from evolve_ray.models.warm_start import warm_start_dir
from evolve_ray.reporting import docs_page as docs
from evolve_ray.reporting.report import load_rows
from evolve_ray.rundir import read_json, write_json

log = logging.getLogger(__name__)


def run_arm(
    arm: Arm, seed: int, run_dir: Path, sets: list[str], *, rounds: int, warm: Path, config: str | None = None
) -> dict[str, float]:
    """One arm, one seed: its table row (reused from run_dir/row.json when already there)."""
    done = run_dir / "row.json"
    if done.exists():
        return read_json(done)
    eval_sets = ["run.eval_strategy=chain", f"run.eval_turns={TURNS}"]
    t0 = time.perf_counter()
    extra: dict[str, float] = {}
    # The shared settings (--config, --set, seed, lr) are the base: each applies to the arms where it has an
    # effect (training.eta to INPO's), and only the arm's own settings must all apply.
    shared = overrides_of(config, sets)
    if arm.trains:
        # No start evaluation: it would repeat the sr_sft arm's (the same warm start, prompts and greedy chain).
        cfg = load_config(
            None,
            [
                *arm.sets,
                *eval_sets,
                "run.eval_start=false",
                f"run.rounds={rounds}",
                f"run.out={run_dir / 'run'}",
            ],
            base=shared,
        )
        loop.run(cfg)
        rows = [r for r in load_rows(run_dir / "run") if r["round"] >= 0]
        metrics = rows[-1]
        examples = sum(r.get("train/examples", 0.0) for r in rows) / len(rows)
        extra = {"lr": cfg.training.lr, "lr_criterion": lr_criterion(rows)}
    else:
        cfg = load_config(None, eval_sets, base=shared)
        metrics = loop.eval_model(cfg, str(warm / arm.start), run_dir / "eval", strategy="chain", turns=TURNS)
        examples = math.nan
    row = row_from_metrics(metrics, examples_per_round=examples, wall_s=time.perf_counter() - t0) | extra
    row["seed"] = seed
    write_json(done, {k: v for k, v in row.items() if not isinstance(v, float) or math.isfinite(v)})
    return row


def _best_lr(sweep: dict[str, float], lrs: tuple[float, ...]) -> float:
    """The grid value with the highest criterion (NaN counts as worst; ties go to the smaller lr)."""
    return max(lrs, key=lambda lr: (v if math.isfinite(v := sweep.get(f"{lr:g}", math.nan)) else -math.inf, -lr))


def reproduce(
    out: Path,
    *,
    seeds: list[int],
    rounds: int,
    smoke: bool,
    config: str | None = None,
    sets: tuple[str, ...] = (),
    command: str = "",
    only: tuple[str, ...] = (),
    lrs: tuple[float, ...] = LR_GRID,
    docs_page: Path | None = None,
) -> dict[str, Any]:
    """Run every arm (or those in `only`) for every seed; write reproduce.json, .md and .png in `out`,
    and with `docs_page` refresh that page's `reproduce` block with reproduce.md."""
    began, t0 = time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter()
    chosen = arms()
    unknown = sorted(set(only) - set(chosen))
    if unknown:
        raise UserError(f"reproduce --arms: unknown arm {unknown[0]!r}; valid: {', '.join(chosen)}")
    if only:
        chosen = {name: arm for name, arm in chosen.items() if name in only}
    missing = sorted({a.lr_from for a in chosen.values() if a.lr_from} - set(chosen))
    if missing:
        raise UserError(f"reproduce --arms: {missing[0]} is needed too (other arms take its learning rate)")
    if docs_page is not None:
        docs.check_page(docs_page, "reproduce")  # refused now, not after the arms have run
    if smoke:  # a quick check of every arm: one learning rate, no choice
        lrs = lrs[-1:]
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    reused = len(list(out.glob("**/row.json")))  # arm-seed results an earlier run left here
    base = [*DEMO_SETS, *sets, *(SMOKE_SETS if smoke else ())]
    cfg = load_config(None, base=overrides_of(config, base))  # checked where it applies: in the arms
    warm = warm_start_dir(template=cfg.refinement.template)
    started = not ray.is_initialized()
    result: dict[str, Any] = {
        "command": command,
        "seeds": seeds,
        "rounds": rounds,
        "lr_grid": list(lrs),
        "eval_prompts": cfg.data.eval_prompts,
        "warm_start": str(warm),
        "warm_start_measured": read_json(warm / "manifest.json")["measured"],
        "arms": {},
    }
    try:
        for arm in chosen.values():
            result["arms"][arm.name] = _run_arm_seeds(
                arm, seeds, out, base, result, rounds=rounds, warm=warm, config=config, lrs=lrs
            )
            log.info("%s: %s", arm.name, {k: round(v, 3) for k, v in result["arms"][arm.name]["mean"].items()})
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    write_json(out / "reproduce.json", _finite(result))
    (out / "reproduce.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "reproduce.png")
    if docs_page is not None:
        docs.refresh_page(docs_page, "reproduce", docs_block(result, began, time.perf_counter() - t0, reused))
    return result


def docs_block(result: dict[str, Any], started: str, seconds: float, reused: int) -> str:
    """The docs page's `reproduce` block: the line naming the command, then reproduce.md."""
    notes = ["Its plot is reproduce.png, beside the reproduce.md it wrote."]
    if reused:
        notes.append(f"It reused {reused} arm-seed result(s) an earlier run had left in its output directory.")
    line = docs.ran_line(
        result["command"], started=started, seconds=seconds, machine=docs.machine_text(), notes=tuple(notes)
    )
    return line + "\n\n" + docs.embed(markdown(result), level=3)


def _run_arm_seeds(
    arm: Arm,
    seeds: list[int],
    out: Path,
    base: list[str],
    result: dict[str, Any],
    *,
    rounds: int,
    warm: Path,
    config: str | None,
    lrs: tuple[float, ...],
) -> dict[str, Any]:
    """An arm's runs over seeds (after its learning-rate choice), with mean and std."""

    def one(seed: int, lr: float | None) -> dict[str, float]:
        where = out / arm.name / (f"lr{lr:g}" if lr is not None else "") / f"seed{seed}"
        lr_set = [f"training.lr={lr}"] if lr is not None else []
        return run_arm(arm, seed, where, [*base, *seed_sets(seed), *lr_set], rounds=rounds, warm=warm, config=config)

    if not arm.trains:
        runs = [one(s, None) for s in seeds]
        return {"runs": runs} | aggregate(runs)
    sweep: dict[str, float] = {}
    if arm.lr_from:
        lr = result["arms"][arm.lr_from]["lr"]
    else:
        sweep = {f"{x:g}": one(seeds[0], x)["lr_criterion"] for x in lrs}
        lr = _best_lr(sweep, lrs)
        log.info("%s: learning rate %g chosen (criterion by lr: %s)", arm.name, lr, sweep)
    runs = [one(s, lr) for s in seeds]
    return {"runs": runs, "lr": lr, "lr_sweep": sweep} | aggregate(runs)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
