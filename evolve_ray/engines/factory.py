"""Pick and build the inference engine named by the config (`auto`: vLLM when it imports)."""

from __future__ import annotations

import importlib.util
import logging

from evolve_ray.config import Config
from evolve_ray.engines.base import Engine

log = logging.getLogger(__name__)


def resolve_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def make_engine(cfg: Config, model_path: str, *, lora_rank: int = 0) -> Engine:
    """The engine serving `model_path` (a full model), reading and writing text with model.tokenizer
    when it is set (the same tokenizer the prompts are built with), else the model's own.
    lora_rank > 0: ready to serve LoRA adapters up to that rank (Engine.load_adapter)."""
    backend = resolve_backend(cfg.generation.backend)
    m, g = cfg.model, cfg.generation
    tokenizer = m.tokenizer or model_path
    if backend == "vllm":
        from evolve_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            dtype=m.dtype,
            max_model_len=m.max_model_len,
            kv_cache_mib=g.kv_cache_mib,
            enforce_eager=g.enforce_eager,
            tensor_parallel_size=g.tensor_parallel_size,
            seed=g.seed,
            trust_remote_code=m.trust_remote_code,
            tokenizer=tokenizer,
            max_lora_rank=lora_rank,
        )
    from evolve_ray.engines.hf_engine import TransformersEngine

    return TransformersEngine(model_path, dtype=m.dtype, trust_remote_code=m.trust_remote_code, tokenizer=tokenizer)
