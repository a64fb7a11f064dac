"""gen_overhead: generation tokens/s through GeneratorActor streaming into a BufferActor, against
bare `vllm.LLM.generate` with the same engine settings, prompts, lengths and per-request seeds in
an actor with the same num_cpus. Both sides generate exactly the same tokens (checked)."""

from __future__ import annotations

import os
from typing import Any

import ray

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.bench.context import GEN_PROMPTS, GEN_SPEC, BenchContext, param_count, peak_rss_mb, wall
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.config import Config
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.core.strategies import plan_next
from evolve_ray.driver.builders import buffer_args
from evolve_ray.engines.generation import request_seed
from evolve_ray.models.loading import load_tokenizer
from evolve_ray.types import Prompt

REPS = 3
ROUND = 0  # the per-request seeds depend on the round: every rep uses the same one


@ray.remote
class BareVLLM:
    """The peer: one `vllm.LLM` with the generator's engine settings and nothing around it."""

    def __init__(self, model_path: str, llm_kwargs: dict[str, Any]) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=model_path, **llm_kwargs)

    def generate(self, prompt_ids: list[list[int]], seeds: list[int], sampling: dict[str, Any]) -> int:
        """Generated tokens, counted as the product counts them (a stop token is not a response token)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(seed=s, **sampling) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        return sum(
            len(c.token_ids) - int(c.finish_reason == "stop" and c.stop_reason is None and len(c.token_ids) > 0)
            for c in (o.outputs[0] for o in outs)
        )

    def info(self) -> dict[str, float]:
        return {"pid": os.getpid(), "peak_rss_mb": peak_rss_mb()}


def llm_kwargs(cfg: Config) -> dict[str, Any]:
    """The keyword arguments VLLMEngine gives `vllm.LLM` for this config (engines/factory.py)."""
    m, g = cfg.model, cfg.generation
    return {
        "dtype": m.dtype,
        "max_model_len": m.max_model_len,
        "kv_cache_memory_bytes": g.kv_cache_mib << 20,
        "enforce_eager": g.enforce_eager,
        "tensor_parallel_size": g.tensor_parallel_size,
        "seed": g.seed,
        "trust_remote_code": m.trust_remote_code,
        "runner": "generate",
    }


def requests(cfg: Config, prompts: list[Prompt]) -> tuple[list[list[int]], list[int]]:
    """Token ids and seeds of every request the generator's planner makes for `prompts`' first turn."""
    g = cfg.generation
    tok = load_tokenizer(cfg.model.policy)
    ids, seeds = [], []
    for p in prompts:
        for req in plan_next(g.strategy, num_samples=g.num_samples, turns=g.turns, existing=[], prompt_id=p.id):
            ids.append(chat_prompt_ids(tok, p.question))
            seeds.append(request_seed(g.seed, ROUND, req))
    return ids, seeds


def through_actor(ctx: BenchContext, gen: Any, prompts: list[Prompt], tag: str) -> tuple[float, float, float]:
    """(seconds, tokens, seconds inside GenerationRunner) of one GeneratorActor.generate into a
    fresh buffer, as the collect stage calls it."""
    buf = BufferActor.remote(**buffer_args(ctx.gen_config(), str(ctx.workdir / "gen_overhead" / tag), ctx.task()))  # type: ignore[attr-defined]  # a @ray.remote class
    ray.get(buf.open_round.remote(ROUND, prompts))
    seconds, stats = wall(lambda: ray.get(gen.generate.remote(prompts, ROUND, [], buf)))
    ray.kill(buf)
    return seconds, stats["gen/tokens"], stats["gen/seconds"]


def run(ctx: BenchContext) -> BenchResult:
    cfg = ctx.gen_config()
    g = cfg.generation
    prompts = ctx.prompts(GEN_PROMPTS)
    ids, seeds = requests(cfg, prompts)
    sampling = {"temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_new_tokens}
    bare = BareVLLM.options(num_cpus=g.cpus_per_generator, runtime_env={"env_vars": ctx.env}).remote(  # type: ignore[attr-defined]  # a @ray.remote class
        cfg.model.policy, llm_kwargs(cfg)
    )
    (gen,) = ctx.generators(1)
    ray.get(bare.info.remote())

    def bare_once() -> tuple[float, float]:
        return wall(lambda: ray.get(bare.generate.remote(ids, seeds, sampling)))

    through_actor(ctx, gen, prompts, "warmup")  # first calls pay one-off costs on both sides
    bare_once()
    actor_runs, bare_runs = [], []
    for rep in range(REPS):  # interleaved, so drifting load hits both sides alike
        actor_runs.append(through_actor(ctx, gen, prompts, f"rep{rep}"))
        bare_runs.append(bare_once())
    a_s, a_tok, a_runner = min(actor_runs)
    b_s, b_tok = min(bare_runs)
    infos = ray.get([gen.info.remote(), bare.info.remote()])
    ray.kill(bare)
    same = all(t == bare_runs[0][1] for _, t, _ in actor_runs) and all(t == bare_runs[0][1] for _, t in bare_runs)
    return BenchResult(
        "gen_overhead",
        figures=[
            Figure(
                "generation tokens/s, GeneratorActor -> BufferActor",
                a_tok / a_s,
                "tok/s",
                peer=b_tok / b_s,
                peer_name="bare vllm.LLM.generate",
                goal=Goal("ratio", ">=", 0.90),
            )
        ],
        settings={
            "model_params_M": param_count(GEN_SPEC) / 1e6,
            "prompts": len(prompts),
            "sequences": len(ids),
            "strategy": g.strategy,
            "max_new_tokens": g.max_new_tokens,
            "temperature": g.temperature,
            "num_cpus_each": g.cpus_per_generator,
            "tokens_per_run": a_tok,
            "same_tokens_both_sides": same,
            "reps": REPS,
            "actor_s": [round(s, 3) for s, _, _ in actor_runs],
            "actor_runner_s": [round(r, 3) for _, _, r in actor_runs],
            "bare_s": [round(s, 3) for s, _ in bare_runs],
        },
        memory_mb={"GeneratorActor": infos[0]["peak_rss_mb"], "bare vLLM actor": infos[1]["peak_rss_mb"]},
        notes=[
            f"best actor run {a_s:.2f} s, of which {a_runner:.2f} s inside GenerationRunner (prompt building, "
            f"engine, candidates) and the rest Ray dispatch and streaming into the buffer; bare best {b_s:.2f} s"
        ]
        + ([] if same else ["token counts differ between reps or sides: the two sides did not do the same work"]),
    )
