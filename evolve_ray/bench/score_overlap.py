"""score_overlap: wall time of a collect stage's generation with streaming scoring (ScorerActor.run
pulling from the buffer while the generator streams each refinement turn into it), against the
same generation with no scorer running. Same prompts, seeds and round on both sides."""

from __future__ import annotations

from typing import Any

import ray

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.actors.scorer import ScorerActor
from evolve_ray.bench.context import GEN_PROMPTS, GEN_SPEC, BenchContext, param_count, wall
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.driver.builders import buffer_args

REPS = 2
STRATEGY, TURNS = "chain", 3  # the product default: one turn streamed at a time, so scoring can overlap


def one_run(
    ctx: BenchContext, gen: Any, scorer: Any | None, tag: str, n_prompts: int = GEN_PROMPTS
) -> tuple[float, float, float]:
    """(seconds, scorer busy seconds, scoring tail seconds) from launch until generation (and
    scoring, if any) is done, the way loop.collect drives it. The tail is scoring still running
    after generation has returned."""
    prompts = ctx.prompts(n_prompts)
    buf = BufferActor.remote(**buffer_args(ctx.gen_config(), str(ctx.workdir / "score_overlap" / tag), ctx.task()))  # type: ignore[attr-defined]  # a @ray.remote class
    ray.get(buf.open_round.remote(0, prompts))

    def go() -> tuple[float, float]:
        scoring = scorer.run.remote(buf) if scorer is not None else None
        ray.get(gen.generate.remote(prompts, 0, [], buf, strategy=STRATEGY, turns=TURNS))
        ray.get(buf.generation_done.remote())
        if scoring is None:
            return 0.0, 0.0
        tail, stats = wall(lambda: ray.get(scoring))
        return stats["score/busy_s"], tail

    seconds, (busy, tail) = wall(go)
    summary = ray.get(buf.summary.remote())
    ray.kill(buf)
    if scorer is not None and summary["buffer/decided"] != len(prompts):  # decided = every chain scored
        raise RuntimeError(f"scoring stopped early: {summary}")
    return seconds, busy, tail


def run(ctx: BenchContext) -> BenchResult:
    cfg = ctx.gen_config()
    s = cfg.scoring
    (gen,) = ctx.generators(1)
    scorer = ScorerActor.options(num_cpus=s.cpus_per_scorer, runtime_env={"env_vars": ctx.env}).remote(  # type: ignore[attr-defined]  # a @ray.remote class
        cfg, cfg.model.reward, 0, ctx.task()
    )
    one_run(ctx, gen, scorer, "warmup", n_prompts=4)  # the scorer's first forward pays one-off costs
    alone, overlapped = [], []
    for rep in range(REPS):
        alone.append(one_run(ctx, gen, None, f"alone{rep}")[0])
        overlapped.append(one_run(ctx, gen, scorer, f"scored{rep}"))
    infos = ray.get([gen.info.remote(), scorer.info.remote()])
    ray.kill(scorer)
    both_s, busy, tail = min(overlapped)
    return BenchResult(
        "score_overlap",
        figures=[
            Figure(
                "generate + streaming score, wall",
                both_s,
                "s",
                peer=min(alone),
                peer_name="generation alone",
                goal=Goal("ratio", "<=", 1.10),
            )
        ],
        settings={
            "model_params_M": param_count(GEN_SPEC) / 1e6,
            "reward_params_M": param_count(GEN_SPEC) / 1e6,
            "prompts": GEN_PROMPTS,
            "strategy": f"{STRATEGY} (K={TURNS})",
            "max_new_tokens": cfg.generation.max_new_tokens,
            "scoring_micro_batch": s.micro_batch,
            "num_cpus": f"generator {cfg.generation.cpus_per_generator}, scorer {s.cpus_per_scorer}",
            "scorer_busy_s": busy,
            "scoring_tail_s": tail,
            "alone_s": [round(x, 3) for x in alone],
            "with_scoring_s": [round(x, 3) for x, _, _ in overlapped],
        },
        memory_mb={"GeneratorActor": infos[0]["peak_rss_mb"], "ScorerActor": infos[1]["peak_rss_mb"]},
        notes=[
            f"scoring still running after generation returned: {tail:.2f} s (the last turn can only be scored "
            f"once it exists); the rest of the gap is the scorer competing with the generator for the cores"
        ],
    )
