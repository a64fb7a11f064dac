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


def make_engine(cfg: Config, model_path: str) -> Engine:
    backend = resolve_backend(cfg.generation.backend)
    m, g = cfg.model, cfg.generation
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
        )
    from evolve_ray.engines.hf_engine import TransformersEngine

    return TransformersEngine(model_path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
