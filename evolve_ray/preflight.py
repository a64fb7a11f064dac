"""Checks and resolution done before any actor starts: model paths, tokenizer, sizes.

An empty `model.policy` / `model.reward` means the built-in tiny models, built into the run
directory (the only place the project writes). No ray here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from evolve_ray.config import Config, ConfigError
from evolve_ray.models.loading import check_model_path, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModels:
    policy: str
    reward: str
    tokenizer: str


def resolve_models(cfg: Config, run_dir: Path) -> ResolvedModels:
    m = cfg.model
    policy, reward = m.policy, m.reward
    if not policy or (not reward and cfg.scoring.kind == "reward_model"):
        from evolve_ray.models.tiny import build_tiny

        tiny_dir = run_dir / "models" / "tiny"
        if not (tiny_dir / "policy" / "config.json").exists():
            log.info("building the built-in tiny models in %s", tiny_dir)
            build_tiny(tiny_dir)
        policy = policy or str(tiny_dir / "policy")
        reward = reward or str(tiny_dir / "reward")
    check_model_path(policy, what="model.policy", trust_remote_code=m.trust_remote_code)
    if cfg.scoring.kind == "reward_model":
        check_model_path(reward, what="model.reward", trust_remote_code=m.trust_remote_code)
    tokenizer = m.tokenizer or policy
    load_tokenizer(tokenizer, trust_remote_code=m.trust_remote_code)  # must exist and carry a chat template
    check_sizes(cfg, policy)
    return ResolvedModels(policy=policy, reward=reward, tokenizer=tokenizer)


def check_sizes(cfg: Config, policy: str) -> None:
    from transformers import AutoConfig

    mc = AutoConfig.from_pretrained(policy, trust_remote_code=cfg.model.trust_remote_code)
    limit = getattr(mc, "max_position_embeddings", None)  # not every architecture names it
    if limit is not None and cfg.model.max_model_len > limit:
        raise ConfigError(f"model.max_model_len: {cfg.model.max_model_len} exceeds the model's context {limit}")
    if cfg.generation.max_new_tokens >= cfg.model.max_model_len:
        raise ConfigError(
            f"generation.max_new_tokens ({cfg.generation.max_new_tokens}) leaves no room for the prompt "
            f"within model.max_model_len ({cfg.model.max_model_len})"
        )
