"""`evolve-ray reproduce`: the paper's comparison at demo scale, N seeds, through the product path.

Round-based arms run `loop.run` with their config overrides; the SFT arms are evaluated with
`loop.eval_model`. Every arm-seed result is written to ARM/seedN/row.json as soon as it exists,
so rerunning with the same --out skips what is done. The table logic is in evolve_ray.comparison.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import ray

from evolve_ray import loop
from evolve_ray.comparison import SMOKE_SETS, TURNS, Arm, aggregate, arms, markdown, plot, row_from_metrics, seed_sets
from evolve_ray.config import DEMO_SETS, load_config
from evolve_ray.report import load_rows
from evolve_ray.rundir import read_json, write_json
from evolve_ray.warmstart import warm_start_dir

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
    if arm.trains:
        cfg = load_config(config, [*sets, *arm.sets, *eval_sets, f"run.rounds={rounds}", f"run.out={run_dir / 'run'}"])
        loop.run(cfg)
        rows = load_rows(run_dir / "run")
        metrics, pairs = rows[-1], sum(r.get("pairs/count", 0.0) for r in rows) / len(rows)
    else:
        cfg = load_config(config, [*sets, *eval_sets])
        metrics = loop.eval_model(cfg, str(warm / arm.start), run_dir / "eval", strategy="chain", turns=TURNS)
        pairs = math.nan
    row = row_from_metrics(metrics, pairs_per_round=pairs, wall_s=time.perf_counter() - t0) | {"seed": seed}
    write_json(done, {k: v for k, v in row.items() if not isinstance(v, float) or math.isfinite(v)})
    return row


def reproduce(
    out: Path,
    *,
    seeds: list[int],
    rounds: int,
    smoke: bool,
    config: str | None = None,
    sets: tuple[str, ...] = (),
    command: str = "",
) -> dict[str, Any]:
    """Run every arm for every seed; write reproduce.json, reproduce.md and reproduce.png in `out`."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = [*DEMO_SETS, *sets, *(SMOKE_SETS if smoke else ())]
    cfg = load_config(config, base)
    warm = warm_start_dir(out / "warm_start", template=cfg.refinement.template)
    started = not ray.is_initialized()
    result: dict[str, Any] = {
        "command": command,
        "seeds": seeds,
        "rounds": rounds,
        "eval_prompts": cfg.data.eval_prompts,
        "warm_start": str(warm),
        "warm_start_measured": read_json(warm / "manifest.json")["measured"],
        "arms": {},
    }
    try:
        for arm in arms().values():
            runs = [
                run_arm(
                    arm, s, out / arm.name / f"seed{s}", [*base, *seed_sets(s)], rounds=rounds, warm=warm, config=config
                )
                for s in seeds
            ]
            result["arms"][arm.name] = {"runs": runs} | aggregate(runs)
            log.info("%s: %s", arm.name, {k: round(v, 3) for k, v in result["arms"][arm.name]["mean"].items()})
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    write_json(out / "reproduce.json", _finite(result))
    (out / "reproduce.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "reproduce.png")
    return result


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
