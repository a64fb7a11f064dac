"""push: the trainer's weight push (evolve_ray.train.worker.push_weights: pack -> ray.put ->
every generator's load_weights, as rank 0 runs it) into 1 and 2 live vLLM generators serving a
model of that size, against copying the same bytes once in memory in the same process; and the
push of a LoRA adapter (training.lora: rank 16 on every projection) of the same model into a
LoRA-enabled vLLM generator, against that model's full push."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
import torch
from safetensors.torch import load_file

from evolve_ray.bench.context import (
    MAX_MODEL_LEN,
    PUSH_SPECS,
    BenchContext,
    best_of,
    kv_cache_mib,
    param_count,
    peak_rss_mb,
    wall,
)
from evolve_ray.bench.profiling import top_functions
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.config import Config
from evolve_ray.sync.transport import WeightPayload, pack
from evolve_ray.train.round_job import RoundJob
from evolve_ray.train.worker import push_weights

GOAL_FROM_PARAMS = 100e6  # the push goal applies at 100M parameters and above
GOAL_RATIO = 2.5  # at most 2.5 copies of the same bytes, to one generator and to two
REPS = 3
LORA_RANK = 16  # the 8B LoRA recipe's (jobs/configs/llama8b_8gpu_lora.yaml), on its target modules


def copy_seconds(payload: WeightPayload) -> float:
    """One in-memory copy of the payload's arrays into new buffers (allocation and page faults included)."""
    t = time.perf_counter()
    copies = [a.copy() for _, _, a in payload.tensors]
    seconds = time.perf_counter() - t
    del copies
    return seconds


def pack_put_copy(state: dict[str, torch.Tensor]) -> tuple[float, float, float, int]:
    """Seconds to pack and to ray.put the payload alone, the copy peer (best of 3), payload bytes."""
    pack_s, payload = wall(lambda: pack(state, version=0, transport="object_store"))
    put_s, ref = wall(lambda: ray.put(payload))
    copy_s, _ = best_of(3, lambda: copy_seconds(payload))
    del ref
    return pack_s, put_s, copy_s, payload.nbytes


def _load_under_profile(generator: Any, payload: WeightPayload) -> dict:
    """Run inside the generator's process (`__ray_call__`): its own load_weights, with the engine's
    load under cProfile; the load's split and the engine load's five costliest functions."""
    engine = generator.engine
    top: dict[str, float] = {}
    engine.load_weights = lambda weights: top.update(top_functions(lambda: type(engine).load_weights(engine, weights)))
    try:
        generator.load_weights(payload)
    finally:
        del engine.load_weights  # the engine's own method again
    return generator.last_load | {"engine_top_s": top}


def profiled_load(gen: ray.actor.ActorHandle, state: dict[str, torch.Tensor], version: int) -> dict:
    """One more (untimed) load into `gen`, under cProfile: the generator's own split of its load."""
    payload = ray.put(pack(state, version=version, transport="object_store"))
    ref: Any = gen.__ray_call__.remote(_load_under_profile, payload)
    return ray.get(ref)


def sizes(ctx: BenchContext) -> list[str]:
    if ctx.smoke:
        return ["10M"]
    return ["10M", "100M", "500M"] if ctx.large else ["10M", "100M"]


def push_size(ctx: BenchContext, label: str) -> BenchResult:
    """One model size's figures, settings, generator memory and where the push time goes."""
    spec = PUSH_SPECS[label]
    policy = ctx.model(f"push-{label}", spec)["policy"]
    cfg = ctx.config(
        policy,
        **{"model.max_model_len": MAX_MODEL_LEN, "generation.kv_cache_mib": kv_cache_mib(spec, MAX_MODEL_LEN)},
    )
    counts = (1,) if ctx.smoke else (1, 2)
    gens = [ctx.generator(cfg, i) for i in range(max(counts))]
    ray.get([g.info.remote() for g in gens])
    # What full_state_dict hands rank 0: every tensor of the checkpoint.
    state = {k: v for f in sorted(Path(policy).glob("*.safetensors")) for k, v in load_file(f).items()}
    params = sum(t.numel() for t in state.values())
    pack_s, put_s, copy_s, nbytes = pack_put_copy(state)
    version = 0
    part = BenchResult("push", settings={f"{label}_bytes": nbytes, f"{label}_pack_s": pack_s, f"{label}_put_s": put_s})
    for n in counts:

        def push_once(n: int = n) -> float:
            nonlocal version
            job = RoundJob(version, [], [ray.put(gens[:n])], policy, "object_store", submitted_at=time.time())
            version += 1
            seconds, lost, _ = push_weights(state, job)
            if lost:
                raise RuntimeError(f"{lost} generator(s) died during the push benchmark")
            return seconds

        if not ctx.smoke:
            push_once()  # warm-up, not timed: the engines' first reload allocates what later ones reuse
        push_s, samples = best_of(1 if ctx.smoke else REPS, push_once)
        part.settings[f"{label}_n{n}_push_s"] = [round(s, 3) for s in samples]
        goal = Goal("ratio", "<=", GOAL_RATIO) if params >= GOAL_FROM_PARAMS else None
        part.figures.append(
            Figure(f"push {params / 1e6:.0f}M params to {n} generator(s)", push_s, "s", copy_s, "1 copy", goal)
        )
    full_push_s = part.figures[0].value
    part.figures.append(adapter_push(ctx, cfg, label, full_push_s, part.settings))
    split = profiled_load(gens[0], state, version + 1)
    part.settings[f"{label}_load_split_s"] = split
    infos = ray.get([g.info.remote() for g in gens])
    for g in gens:
        ray.kill(g)
    part.memory_mb = {f"GeneratorActor {label} #{i['index']}": i["peak_rss_mb"] for i in infos}
    load_s = part.figures[0].value - pack_s - put_s
    top = ", ".join(f"{name} {s / copy_s:.2f}" for name, s in split["engine_top_s"].items())
    part.notes.append(
        f"{label}: in units of one copy ({copy_s:.3f} s): pack {pack_s / copy_s:.1f}, ray.put {put_s / copy_s:.1f}, "
        f"the generator's load (read, unpack, validate, reload_weights, the call) {load_s / copy_s:.1f}; "
        f"one more push, profiled inside the generator: read + validate {split['read_validate_s'] / copy_s:.2f}, "
        f"the engine's load {split['engine_s'] / copy_s:.2f}, its costliest functions by own time: {top}"
    )
    return part


def adapter_push(ctx: BenchContext, cfg: Config, label: str, full_push_s: float, settings: dict) -> Figure:
    """The LoRA adapter's push (worker.push_weights with adapter=True: its PEFT files written as
    rank 0 writes them, then pack, ray.put, and the generator's vLLM add_lora under a new name) into
    one LoRA-enabled generator, beside the full push of the same model into one generator."""
    from evolve_ray.models.loading import load_policy
    from evolve_ray.models.lora import adapter_tensors, attach, save_adapter
    from evolve_ray.train.parallel import trainable_state_dict

    lora_cfg = ctx.config(
        cfg.model.policy,
        **{
            "model.max_model_len": cfg.model.max_model_len,
            "generation.kv_cache_mib": cfg.generation.kv_cache_mib,
            "training.lora.rank": LORA_RANK,
        },
    )
    gen = ctx.generator(lora_cfg, 9)
    ray.get(gen.info.remote())
    model = attach(load_policy(cfg.model.policy), lora_cfg.training.lora, None)
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # a trained adapter's B is not zero
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.01
    tensors = adapter_tensors(model, trainable_state_dict(model))
    out = ctx.workdir / f"adapter-{label}"
    save_adapter(model, tensors, out, base=cfg.model.policy)
    version = 0

    def push_once() -> float:
        nonlocal version
        version += 1
        job = RoundJob(version - 1, [], [ray.put([gen])], str(out), "object_store", submitted_at=time.time())
        seconds, lost, _ = push_weights(tensors, job, adapter=True)
        if lost:
            raise RuntimeError("the LoRA generator died during the push benchmark")
        return seconds

    if not ctx.smoke:
        push_once()  # warm-up, as for the full push
    push_s, samples = best_of(1 if ctx.smoke else REPS, push_once)
    params = sum(t.numel() for t in tensors.values())
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    settings |= {
        f"{label}_adapter_rank": LORA_RANK,
        f"{label}_adapter_params": params,
        f"{label}_adapter_bytes": nbytes,
        f"{label}_adapter_push_s": [round(s, 4) for s in samples],
    }
    ray.kill(gen)
    name = f"push LoRA r{LORA_RANK} adapter ({params / 1e6:.2f}M params, {nbytes / 1e6:.1f} MB) to 1 generator"
    return Figure(name, push_s, "s", full_push_s, "full push")


def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult("push", settings={"transport": "object_store", "reps": 1 if ctx.smoke else REPS})
    for label in sizes(ctx):
        part = push_size(ctx, label)
        result.figures += part.figures
        result.settings |= part.settings
        result.memory_mb |= part.memory_mb
        result.notes += part.notes
    result.memory_mb["driver (as trainer rank 0)"] = peak_rss_mb()
    result.settings["param_counts_M"] = {k: round(param_count(PUSH_SPECS[k]) / 1e6, 1) for k in sizes(ctx)}
    result.notes.append(
        "push = checkpoint_shapes + pack (numpy views of the tensors, no copy) + ray.put (one copy into shared "
        "memory) + each generator: zero-copy read, validate (shapes, NaN/inf), vLLM reload_weights; pack_s and "
        "put_s are timed alone in settings; one untimed warm-up push per generator count",
    )
    result.notes.append(
        f"adapter push = worker.push_weights(adapter=True) of a rank-{LORA_RANK} adapter on every projection "
        "(float32, as checkpoints hold it): pack + ray.put + the LoRA generator's read, checks, PEFT files "
        "written to its scratch directory and vLLM's add_lora under a new name; its peer is the same model's "
        "full push into one generator"
    )
    return result
