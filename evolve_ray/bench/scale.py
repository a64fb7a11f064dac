"""scale: generation tokens/s with 1, 2 and 4 generators sharing one fixed workload split up
front (prompts[i::n]), against linear scaling of the single generator; and with 1 and 2
generators pulling the same workload from the buffer in guided batches (the collect stage's way,
which lets generators join and leave mid-round), against that static split."""

from __future__ import annotations

import os
from typing import Any

import ray

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.bench.context import GEN_PROMPTS, GEN_SPEC, BenchContext, param_count, wall
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.driver.builders import buffer_args

COUNTS = (1, 2, 4)
PULL_COUNTS = (1, 2)
PULL_REPS = 3
REPS = 2
FLAT = 0.75  # efficiency below which the curve counts as flattened


def one_run(
    ctx: BenchContext, gens: list[Any], tag: str, n_prompts: int = GEN_PROMPTS, *, pull: bool = False
) -> tuple[float, float]:
    """(seconds, tokens) for the whole workload split over `gens` up front, or pulled by them."""
    prompts = ctx.prompts(n_prompts)
    cfg = ctx.gen_config()
    buf = BufferActor.remote(**buffer_args(cfg, str(ctx.workdir / "scale" / tag), ctx.task()))  # type: ignore[attr-defined]  # a @ray.remote class
    ray.get(buf.open_round.remote(0, prompts))
    ray.get(buf.set_workers.remote(len(gens)))
    n, batch = len(gens), cfg.generation.max_work_batch
    if pull:
        calls = lambda: ray.get([g.work.remote(0, buf, i, batch) for i, g in enumerate(gens)])  # noqa: E731
    else:
        calls = lambda: ray.get([g.generate.remote(prompts[i::n], 0, [], buf) for i, g in enumerate(gens)])  # noqa: E731
    seconds, stats = wall(calls)
    ray.kill(buf)
    return seconds, sum(s["gen/tokens"] for s in stats)


def pull_figure(ctx: BenchContext, gens: list[Any]) -> Figure:
    """Tokens/s of `gens` pulling the workload, against a static split run interleaved with it
    (the same machine state); best of PULL_REPS each."""
    n = len(gens)
    pairs = [
        (one_run(ctx, gens, f"pull{n}r{rep}", pull=True), one_run(ctx, gens, f"static{n}r{rep}"))
        for rep in range(PULL_REPS)
    ]
    (pull_s, pull_tokens), (static_s, static_tokens) = min(p for p, _ in pairs), min(s for _, s in pairs)
    return Figure(
        f"{n} generator(s) pulling work, tokens/s",
        pull_tokens / pull_s,
        "tok/s",
        peer=static_tokens / static_s,
        peer_name="static split, interleaved",
        goal=Goal("ratio", ">=", 1.0),  # pulling must not cost throughput
    )


def run(ctx: BenchContext) -> BenchResult:
    gens = ctx.generators(max(COUNTS))
    for i, g in enumerate(gens):  # every engine's first generate pays one-off costs
        one_run(ctx, [g], f"warmup{i}", n_prompts=2)
    tps: dict[int, float] = {}
    samples: dict[int, list[float]] = {}
    for n in COUNTS:
        runs = [one_run(ctx, gens[:n], f"n{n}r{rep}") for rep in range(REPS)]
        seconds, tokens = min(runs)
        tps[n], samples[n] = tokens / seconds, [round(s, 3) for s, _ in runs]
    figures = [
        Figure(f"{n} generator(s), tokens/s", tps[n], "tok/s", peer=n * tps[1], peer_name="linear") for n in COUNTS
    ] + [pull_figure(ctx, gens[:n]) for n in PULL_COUNTS]
    cores = os.cpu_count() or 1
    flat = [n for n in COUNTS if tps[n] / (n * tps[1]) < FLAT]
    notes = [
        f"flattens at {flat[0]} generators (efficiency < {FLAT}): {cores} cores are shared by every engine, so "
        f"beyond {cores} generators they time-share the cores instead of adding compute"
        if flat
        else f"stays above {FLAT} efficiency up to {max(COUNTS)} generators"
    ]
    infos = ray.get([g.info.remote() for g in gens])
    g = ctx.gen_config().generation
    return BenchResult(
        "scale",
        figures=figures,
        settings={
            "model_params_M": param_count(GEN_SPEC) / 1e6,
            "prompts": GEN_PROMPTS,
            "strategy": f"{g.strategy} (N={g.num_samples})",
            "max_new_tokens": g.max_new_tokens,
            "max_work_batch": g.max_work_batch,
            "num_cpus_each": g.cpus_per_generator,
            "cluster": "one node (this machine)",
            "physical_cpus": cores,
            **{f"n{n}_s": samples[n] for n in COUNTS},
        },
        memory_mb={f"GeneratorActor {i['index']}": i["peak_rss_mb"] for i in infos},
        notes=notes,
    )
