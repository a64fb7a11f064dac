"""GeneratorActor: one inference engine; generates turns, streams them, loads weights in place.

With LoRA (training.lora, or a policy path that is an adapter directory) the engine serves the
base model and loads each pushed adapter under a new name; an actor started on a LoRA checkpoint
(a replacement, a generator added mid-run, a resumed run) loads its adapter before it answers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import ray
from ray.util import get_current_placement_group

from evolve_ray.config import Config
from evolve_ray.core.strategies import Strategy
from evolve_ray.engines.base import SamplingSpec, WeightLoadError, checkpoint_shapes, validate_weights
from evolve_ray.engines.factory import make_engine
from evolve_ray.engines.generation import GenerationRunner
from evolve_ray.models.loading import load_tokenizer
from evolve_ray.models.lora import adapter_rank, check_adapter, split_policy
from evolve_ray.sync.transport import WeightPayload, adapter_dir, adapter_scratch, unpack
from evolve_ray.types import Candidate, Prompt

log = logging.getLogger(__name__)


# `info` runs in its own thread so a busy actor (a long generate or scoring loop) still answers it.
@ray.remote(concurrency_groups={"control": 1})  # type: ignore[call-overload]  # valid, missing from ray's overloads
class GeneratorActor:
    def __init__(self, cfg: Config, model_path: str, index: int, version: int = 0) -> None:
        logging.basicConfig(level=cfg.run.log_level)
        self.index, self.served_version, self.broken = index, version, ""
        self.last_load: dict = {}  # where the last weight load's time went (info() reports it)
        base, adapter = split_policy(model_path)
        self.lora_rank = max(cfg.training.lora.rank, adapter_rank(adapter) if adapter else 0)
        self.engine = make_engine(cfg, base, lora_rank=self.lora_rank)
        self.tokenizer = load_tokenizer(  # a LoRA checkpoint carries the run's tokenizer
            cfg.model.tokenizer or model_path, trust_remote_code=cfg.model.trust_remote_code
        )
        # What a push must match: the full model's names and shapes, or the adapter served (none yet: any).
        self.expected = checkpoint_shapes(adapter or base) if adapter or not self.lora_rank else {}
        # Where adapters pushed through the object store are written out (made on the first one);
        # the ones left by killed generators on this machine are removed here.
        self.scratch = adapter_scratch(Path(tempfile.gettempdir()), os.getpid())
        if adapter:
            self.engine.load_adapter(adapter, f"v{version}")
        self.runner = GenerationRunner(self.engine, self.tokenizer, cfg)
        log.info("generator %d ready: backend=%s model=%s", index, self.engine.name, model_path)

    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        return {
            "index": self.index,
            "backend": self.engine.name,
            "version": self.served_version,
            "pid": os.getpid(),
            "placement_group": pg.id.hex() if (pg := get_current_placement_group()) else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "last_load": self.last_load,
        }

    def version(self) -> int:
        return self.served_version

    def generate(self, prompts: list[Prompt], round_: int, existing: list[Candidate], buffer, **plan) -> dict:
        """Generate the prompts' missing candidates, streaming each finished turn to `buffer`."""
        self._check_alive()
        refs: list = []

        def emit(cands: list[Candidate], finished: list[str]) -> None:
            refs.append(buffer.add_candidates.remote(cands, finished))

        stats = self.runner.run(
            prompts, round_=round_, version=self.served_version, existing=existing, emit=emit, **plan
        )
        ray.get(refs)  # the buffer has everything before the call returns
        return stats

    def work(self, round_: int, buffer, worker: int, max_batch: int) -> dict:
        """Pull batches of prompts from `buffer` until it has none left for this generator;
        each batch's turns stream to the buffer as `generate` does. Returns summed counters
        (gen/seconds: this generator's busy time)."""
        totals: dict[str, float] = {}
        while True:
            prompts, existing = ray.get(buffer.take_work.remote(worker, max_batch))
            if not prompts:
                return totals | {"gen/batches": totals.get("gen/batches", 0.0)}
            stats = self.generate(prompts, round_, existing, buffer) | {"gen/batches": 1.0}
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v

    def generate_eval(
        self,
        prompts: list[Prompt],
        *,
        round_: int,
        strategy: Strategy,
        num_samples: int,
        turns: int,
        temperature: float,
    ) -> list[Candidate]:
        """A strategy's candidates for held-out prompts, returned rather than streamed to a buffer."""
        self._check_alive()
        out: list[Candidate] = []
        top_p = self.runner.spec.top_p if temperature > 0 else 1.0
        spec = SamplingSpec(temperature=temperature, top_p=top_p, max_new_tokens=self.runner.spec.max_new_tokens)
        self.runner.run(
            prompts,
            round_=round_,
            version=self.served_version,
            existing=[],
            emit=lambda cands, _finished: out.extend(cands),
            strategy=strategy,
            num_samples=num_samples,
            turns=turns,
            spec=spec,
        )
        return out

    def load_weights(self, payload: WeightPayload) -> int:
        """Load new weights in place. A payload that doesn't match leaves the old weights serving;
        a failure inside the engine marks this actor broken (it refuses work from then on)."""
        self._check_alive()
        t0 = time.perf_counter()
        weights = dict(unpack(payload))
        if payload.adapter_config:  # LoRA: only the adapter travels
            self._check_adapter(weights, payload.adapter_config)  # raises before the engine is touched
            path = adapter_dir(payload, weights, self.scratch)
            load = functools.partial(self.engine.load_adapter, path, f"v{payload.version}")
        else:
            validate_weights(weights, self.expected)  # raises before the engine is touched
            path, load = "", functools.partial(self.engine.load_weights, weights)
        t1 = time.perf_counter()
        try:
            load()
        except Exception as e:
            self.broken = f"weight load of version {payload.version} failed inside the engine: {e}"
            raise WeightLoadError(self.broken) from e
        self.served_version = payload.version
        self.last_load = {"version": payload.version, "read_validate_s": t1 - t0, "engine_s": time.perf_counter() - t1}
        if payload.adapter_config:
            self.expected = {k: tuple(v.shape) for k, v in weights.items()}
            for old in self.scratch.glob("v*"):  # the adapters written for earlier versions
                if str(old) != path:
                    shutil.rmtree(old, ignore_errors=True)
        log.info("generator %d now serves policy version %d", self.index, payload.version)
        return self.served_version

    def _check_adapter(self, weights: dict, config_text: str) -> None:
        """A pushed adapter must be a LoRA adapter within the engine's rank, shaped like the one served."""
        rank = json.loads(config_text)["r"]
        if rank > self.lora_rank:
            raise WeightLoadError(f"adapter of rank {rank}, but this engine serves ranks up to {self.lora_rank}")
        try:
            check_adapter(weights, rank)
        except ValueError as e:
            raise WeightLoadError(str(e)) from None
        if self.expected:
            validate_weights(weights, self.expected)

    def _check_alive(self) -> None:
        if self.broken:
            raise WeightLoadError(f"generator {self.index} is unusable ({self.broken}); restart it")
