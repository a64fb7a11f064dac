"""What the benchmarks share: model sizes, one config builder, built models, the generator fleet
that gen_overhead, score_overlap, scale and round_overhead reuse, and small measuring helpers."""

from __future__ import annotations

import logging
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.config import DEMO_REFINE_TEMPLATE, Config, load_config
from evolve_ray.driver.builders import make_task
from evolve_ray.models.tiny import TinySpec, build_policy, build_reward, build_tokenizer, save
from evolve_ray.types import PreferencePair, Prompt

log = logging.getLogger(__name__)

# head_dim 64 everywhere (vLLM CPU attention: docs/platform.md). Parameter counts include embeddings.
GEN_SPEC = TinySpec(hidden=384, layers=6, heads=6, intermediate=1536)  # ~14M: compute, not call overhead, dominates
ENGINE_SPEC = TinySpec(hidden=512, layers=8, heads=8, intermediate=2048)  # ~34M
PUSH_SPECS = {
    "10M": TinySpec(hidden=256, layers=10, heads=4, intermediate=1024),
    "100M": TinySpec(hidden=1024, layers=6, heads=16, intermediate=4096),
    "500M": TinySpec(hidden=1536, layers=13, heads=24, intermediate=6144),
}
MAX_MODEL_LEN = 512
GEN_SETTINGS = {  # the generation workload of gen_overhead, score_overlap and scale
    "generation.backend": "vllm",
    "generation.strategy": "parallel",
    "generation.num_samples": 2,
    "generation.max_new_tokens": 64,
    "generation.temperature": 1.0,
    "generation.cpus_per_generator": 0.5,
    "model.max_model_len": MAX_MODEL_LEN,
}
GEN_PROMPTS = 32


def param_count(spec: TinySpec, vocab: int = 320) -> int:
    """Parameters of a TinySpec model (untied embeddings, no biases: the Llama family)."""
    h, i = spec.hidden, spec.intermediate
    per_layer = 4 * h * h + 3 * h * i + 2 * h
    return spec.layers * per_layer + 2 * vocab * h + h


def kv_cache_mib(spec: TinySpec, max_model_len: int) -> int:
    """KV cache that holds two full-length sequences (vLLM refuses to start with less than one)."""
    per_token = 2 * spec.layers * spec.hidden * 4  # K and V, fp32
    return max(64, -(-2 * max_model_len * per_token // (1 << 20)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_rss_of(pid: int) -> float:
    """Peak RSS (VmHWM) of another process on this node, in MB; NaN once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def best_of(reps: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """The smallest of `reps` timings of `fn` (which returns seconds), and all of them. The minimum
    is the run least disturbed by other work on a shared machine."""
    samples = [fn() for _ in range(reps)]
    return min(samples), samples


def wall(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def synthetic_pairs(n: int, kinds: tuple[str, ...], *, seed: int = 0, response_chars: int = 48) -> list[PreferencePair]:
    """`n` prompts' pairs of each kind, with random digit-and-word responses of a fixed length."""
    rng = random.Random(seed)
    words = ["the", "sum", "is", "so", "carry", "one", "then", "add", "tens", "answer"]

    def text() -> str:
        out = ""
        while len(out) < response_chars:
            out += rng.choice(words + [str(rng.randint(0, 99))]) + " "
        return out[:response_chars]

    pairs = []
    for i in range(n):
        question = f"{rng.randint(10, 99)}+{rng.randint(10, 99)}="
        chosen, rejected = text(), text()
        for kind in kinds:
            example = rejected if kind == "refine" else chosen
            prompt = question if kind == "direct" else DEMO_REFINE_TEMPLATE.format(question=question, answer=example)
            pairs.append(
                PreferencePair(
                    prompt_id=f"q{i}",
                    round=0,
                    kind=kind,  # type: ignore[arg-type]
                    question=question,
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    chosen_id=f"q{i}/c0/t1",
                    rejected_id=f"q{i}/c0/t0",
                    chosen_score=1.0,
                    rejected_score=0.0,
                    rule="reward",
                    policy_version=0,
                )
            )
    return pairs


@dataclass
class BenchContext:
    """Shared state of one bench run. `workdir` is scratch space (models, buffer journals)."""

    workdir: Path
    large: bool
    smoke: bool
    env: dict[str, str]
    _models: dict[str, dict[str, str]] = field(default_factory=dict)
    _generators: list[Any] = field(default_factory=list)
    _gen_cfg: Config | None = None

    def model(self, key: str, spec: TinySpec, *, reward: bool = False) -> dict[str, str]:
        """Build (once) a random policy of `spec`, and its reward model if asked, under workdir/key."""
        if key not in self._models:
            tok = build_tokenizer()
            out = self.workdir / "models" / key
            t, _ = wall(lambda: save(build_policy(spec, tok), tok, out / "policy"))
            paths = {"policy": str(out / "policy")}
            if reward:
                paths["reward"] = str(save(build_reward(spec, tok), tok, out / "reward"))
            log.info("built %s model (%.1fM parameters) in %.1f s", key, param_count(spec) / 1e6, t)
            self._models[key] = paths
        return self._models[key]

    def config(self, policy: str, reward: str = "", /, **sets: Any) -> Config:
        """A Config with the bench's overrides (`section.key=value` pairs), validated like user input."""
        items = {"model.policy": policy, "model.reward": reward, "run.out": str(self.workdir / "run")} | sets
        items.setdefault("run.log_level", "WARNING")
        return load_config(None, [f"{k}={v}" for k, v in items.items()])

    def gen_config(self) -> Config:
        if self._gen_cfg is None:
            paths = self.model("gen", GEN_SPEC, reward=True)
            self._gen_cfg = self.config(paths["policy"], paths["reward"], **GEN_SETTINGS)
        return self._gen_cfg

    def prompts(self, n: int) -> list[Prompt]:
        return make_task(self.gen_config().data).prompts("round", n)

    def generator(self, cfg: Config, index: int) -> Any:
        """A GeneratorActor as the Fleet makes one (same options), not yet waited for."""
        g = cfg.generation
        return GeneratorActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            num_cpus=g.cpus_per_generator, num_gpus=g.gpus_per_generator, runtime_env={"env_vars": self.env}
        ).remote(cfg, cfg.model.policy, index)

    def generators(self, n: int) -> list[Any]:
        """The first `n` generators serving the GEN_SPEC model (started on first need, then kept)."""
        cfg = self.gen_config()
        while len(self._generators) < n:
            self._generators.append(self.generator(cfg, len(self._generators)))
        ray.get([g.info.remote() for g in self._generators[:n]])
        return self._generators[:n]

    def release_generators(self) -> None:
        for g in self._generators:
            ray.kill(g, no_restart=True)
        self._generators.clear()

    def task(self) -> Any:
        return make_task(self.gen_config().data)
