"""Checks and resolution done before any actor starts: model paths, tokenizer, sizes.

An empty `model.policy` / `model.reward` means the built-in warm start (evolve_ray.models.warm_start): a
tiny Stage-1 policy at partial skill on the addition task and a reward model trained on verifier
labels, read from the package's assets (evolve_ray/assets/warm_start); nothing is written to the
run directory, and a missing one is a broken install (one line says how to rebuild it). No ray here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from evolve_ray.config import Config, ConfigError
from evolve_ray.driver.memory_plan import Plan, check_plan, plan_for
from evolve_ray.engines.factory import resolve_backend
from evolve_ray.models.loading import check_model_path, load_tokenizer
from evolve_ray.models.warm_start import warm_start_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModels:
    policy: str
    reward: str
    tokenizer: str


def resolve_models(cfg: Config, *, picks: bool = False) -> ResolvedModels:
    """The models' paths, checked. `picks`: a reward model is needed to pick best-of-N in evaluation
    even under scoring.kind=verifier (config.best_of_n_unpicked says when there is none)."""
    m = cfg.model
    policy, reward = m.policy, m.reward
    needs_reward = cfg.scoring.kind == "reward_model" or picks
    if needs_reward and not reward and cfg.data.task != "arith":
        raise ConfigError(
            f"model.reward is empty and data.task={cfg.data.task}: the built-in reward model knows only the "
            "built-in arithmetic task and would score your prompts' answers at random; set model.reward to a "
            "reward model for them, or scoring.kind=verifier where the data has answers to check"
        )
    if not policy or (not reward and needs_reward):
        built_in = warm_start_dir(template=cfg.refinement.template)
        policy = policy or str(built_in / "policy")
        reward = reward or str(built_in / "reward")
    check_model_path(policy, what="model.policy", trust_remote_code=m.trust_remote_code)
    if needs_reward:
        check_model_path(reward, what="model.reward", trust_remote_code=m.trust_remote_code, scalar=True)
    tokenizer = m.tokenizer or policy
    load_tokenizer(tokenizer, trust_remote_code=m.trust_remote_code)  # must exist and carry a chat template
    check_sizes(cfg, policy)
    return ResolvedModels(policy=policy, reward=reward, tokenizer=tokenizer)


def check_sizes(cfg: Config, policy: str) -> None:
    from transformers import AutoConfig

    from evolve_ray.models.lora import split_policy

    base = split_policy(policy)[0]  # a LoRA checkpoint's sizes are its base's
    mc = AutoConfig.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    limit = getattr(mc, "max_position_embeddings", None)  # not every architecture names it
    if limit is not None and cfg.model.max_model_len > limit:
        raise ConfigError(f"model.max_model_len: {cfg.model.max_model_len} exceeds the model's context {limit}")
    if cfg.generation.max_new_tokens >= cfg.model.max_model_len:
        raise ConfigError(
            f"generation.max_new_tokens ({cfg.generation.max_new_tokens}) leaves no room for the prompt "
            f"within model.max_model_len ({cfg.model.max_model_len})"
        )


def check_gpus(cfg: Config, cluster_gpus: float, *, training: bool = True) -> None:
    """Refuse a run that asks for more GPUs than the cluster has (it would wait forever for them).

    Args:
        cluster_gpus: the cluster's total GPUs (ray.cluster_resources()["GPU"], 0 when absent).
        training: count the train workers too (False for `evolve-ray eval`, which starts none).
    """
    g, s, t = cfg.generation, cfg.scoring, cfg.training
    if g.gpus_per_generator and resolve_backend(g.backend) == "transformers":  # backend=auto without vLLM
        raise ConfigError(
            f"generation.gpus_per_generator={g.gpus_per_generator:g} with generation.backend=auto, and vLLM does "
            "not import here: the generators would run the transformers engine, on CPU; install the GPU engine "
            "(bash cluster/install.sh --gpu) or set generation.gpus_per_generator=0"
        )
    asked = {
        "generation.num_generators x gpus_per_generator": g.num_generators * g.gpus_per_generator,
        "scoring.num_scorers x gpus_per_scorer": s.num_scorers * s.gpus_per_scorer,
        "training.num_workers (use_gpu: 1 each)": float(t.num_workers) if training and t.use_gpu else 0.0,
    }
    total = sum(asked.values())
    if total > cluster_gpus + 1e-9:
        parts = ", ".join(f"{k} = {v:g}" for k, v in asked.items() if v)
        raise ConfigError(f"the run asks for {total:g} GPUs ({parts}) but the cluster has {cluster_gpus:g}")


def check_fits(cfg: Config, policy: str, reward: str, cluster_resources: Mapping[str, float]) -> Plan:
    """Refuse, in one line, a run whose roles cannot fit: the CPUs or GPUs all roles reserve
    against the cluster's, and each role's memory per GPU against a GPU's (evolve_ray.driver.memory_plan).

    Args:
        policy, reward: the resolved model paths (`resolve_models`).
        cluster_resources: ray.cluster_resources().

    Returns:
        The plan (the driver writes it to RUN/memory_plan.txt).
    """
    plan = plan_for(cfg, cluster=cluster_resources, policy_path=policy, reward_path=reward)
    check_plan(plan)
    return plan


def check_adapter_start(cfg: Config, policy: str) -> None:
    """A run that starts training from a LoRA adapter directory must train that adapter: refused in
    one line before any actor starts, instead of inside the Ray Train workers."""
    from evolve_ray.models.lora import adapter_config, is_adapter

    if not is_adapter(policy):
        return
    saved, lora = adapter_config(policy), cfg.training.lora
    rank, targets = int(saved["r"]), saved["target_modules"]
    targets = {targets} if isinstance(targets, str) else set(targets)
    merged = "or start from a merged model (evolve-ray export --format merged)"
    if not lora.rank:
        raise ConfigError(
            f"model.policy {policy} is a LoRA adapter (rank {rank}): set training.lora.rank={rank} to train it, {merged}"
        )
    if rank != lora.rank or targets != set(lora.target_modules):
        raise ConfigError(
            f"model.policy {policy} is a LoRA adapter of rank {rank} on {sorted(targets)}, but training.lora asks "
            f"for rank {lora.rank} on {sorted(lora.target_modules)}: match them, {merged}"
        )
    if cfg.training.reference == "fixed" and cfg.training.loss != "sft":
        raise ConfigError(
            "training.reference=fixed with training.lora scores against the base with the adapter off, but "
            f"model.policy {policy} is an adapter: use training.reference=refresh, {merged}"
        )
