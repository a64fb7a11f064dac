"""engine: the vLLM backend against the transformers backend, each inside a GeneratorActor (the
product path), on the same ~34M-parameter random model, prompts, seeds and lengths."""

from __future__ import annotations

import ray

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.bench.context import ENGINE_SPEC, MAX_MODEL_LEN, BenchContext, param_count, wall
from evolve_ray.bench.report import BenchResult, Figure
from evolve_ray.driver.builders import buffer_args

PROMPTS = 16
MAX_NEW_TOKENS = 32


def run(ctx: BenchContext) -> BenchResult:
    policy = ctx.model("engine", ENGINE_SPEC)["policy"]
    prompts = ctx.prompts(PROMPTS)
    common = {  # one direct answer per prompt (the `generate` call below asks for it: a collection config can't)
        "generation.max_new_tokens": MAX_NEW_TOKENS,
        "generation.temperature": 1.0,
        "model.max_model_len": MAX_MODEL_LEN,
    }
    cfgs = {b: ctx.config(policy, **common, **{"generation.backend": b}) for b in ("vllm", "transformers")}
    gens = {b: ctx.generator(cfg, 0) for b, cfg in cfgs.items()}
    ray.get([g.info.remote() for g in gens.values()])

    def once(backend: str, n: int, tag: str) -> tuple[float, float]:
        args = buffer_args(cfgs[backend], str(ctx.workdir / "engine" / f"{backend}-{tag}"), ctx.task())
        buf = BufferActor.remote(**args)  # type: ignore[attr-defined]  # a @ray.remote class
        ray.get(buf.open_round.remote(0, prompts[:n]))
        seconds, stats = wall(
            lambda: ray.get(gens[backend].generate.remote(prompts[:n], 0, [], buf, strategy="direct"))
        )
        ray.kill(buf)
        return seconds, stats["gen/tokens"]

    runs = {}
    for backend in gens:
        once(backend, 2, "warmup")
        runs[backend] = once(backend, PROMPTS, "run")
    tps = {b: tok / s for b, (s, tok) in runs.items()}
    infos = {b: ray.get(g.info.remote()) for b, g in gens.items()}
    for g in gens.values():
        ray.kill(g)
    wins = tps["vllm"] > tps["transformers"]
    return BenchResult(
        "engine",
        figures=[
            Figure(
                "vLLM backend tokens/s",
                tps["vllm"],
                "tok/s",
                peer=tps["transformers"],
                peer_name="transformers backend",
            )
        ],
        settings={
            "model_params_M": param_count(ENGINE_SPEC) / 1e6,
            "prompts": PROMPTS,
            "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": 1.0,
            "num_cpus_each": cfgs["vllm"].generation.cpus_per_generator,
            "tokens": {b: t for b, (_, t) in runs.items()},
            "seconds": {b: round(s, 3) for b, (s, _) in runs.items()},
        },
        memory_mb={f"GeneratorActor ({b})": i["peak_rss_mb"] for b, i in infos.items()},
        notes=[
            f"vLLM {'wins' if wins else 'does NOT win'} ({tps['vllm'] / tps['transformers']:.1f}x): "
            + (
                "backend=auto keeps picking vLLM when it imports"
                if wins
                else "backend=auto should not prefer vLLM on this machine"
            ),
            "the transformers backend generates one prompt at a time (per-request seeds stay reproducible), "
            "vLLM batches the whole turn",
        ],
    )
