"""Load policy, reward model and tokenizer from a local directory or a hub id, with clear errors.

Weights load from safetensors only (never pickle), and repository code runs only when the
config allows it. No ray, no vllm.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from evolve_ray.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """A model or tokenizer path that is missing or not what it should be."""


def check_model_path(name: str, *, what: str, trust_remote_code: bool = False, scalar: bool = False) -> None:
    """Fail with one clear message if `name` is neither a model directory nor a resolvable hub id
    (`scalar`: nor a reward model, a classifier with one label, whose logit is the score)."""
    p = Path(name)
    looks_local = p.is_absolute() or name.startswith((".", "~")) or p.exists()
    if looks_local and not p.exists():
        raise ModelLoadError(f"{what}: path does not exist: {name}")
    if looks_local and (p / "adapter_config.json").is_file():  # a LoRA checkpoint: its adapter, then its base
        from evolve_ray.models.lora import ADAPTER_WEIGHTS, adapter_base

        if not (p / ADAPTER_WEIGHTS).is_file():
            raise ModelLoadError(f"{what}: {name} is a LoRA adapter without its weights ({ADAPTER_WEIGHTS})")
        base = adapter_base(name)
        check_model_path(
            base, what=f"{what} (the base of the LoRA adapter {name})", trust_remote_code=trust_remote_code
        )
        return
    if looks_local and not (p / "config.json").is_file():
        raise ModelLoadError(f"{what}: {name} is not a model directory (no config.json)")
    if looks_local and not any(p.glob("*.safetensors")):
        found = ", ".join(sorted(f.name for f in p.glob("*.bin"))[:3]) or "no weight files"
        raise ModelLoadError(
            f"{what}: {name} has no *.safetensors weights ({found}); only safetensors are loaded, since pickle "
            "checkpoints can run code: re-save it with save_pretrained(..., safe_serialization=True)"
        )
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "trust_remote_code" in str(e) and not trust_remote_code:  # the fix is on a later line
            first += " (it ships its own code: set model.trust_remote_code=true only if you trust it)"
        raise ModelLoadError(f"{what}: cannot load a model config from {name!r}: {first}") from None
    if scalar and config.num_labels != 1:
        raise ModelLoadError(
            f"{what}: {name} has {config.num_labels} labels; a reward model has 1 (its one logit is the score), "
            "and the vLLM scorer would read the first of them"
        )


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, which must carry a chat template (prompts are built through it)."""
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"tokenizer: cannot load from {name!r}: {str(e).splitlines()[0]}") from None
    if not tok.chat_template:
        raise ModelLoadError(f"tokenizer {name!r} has no chat template; prompts are built through one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(name: str, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    check_model_path(name, what="policy", trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        name, dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code
    )


def load_reward(name: str, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    check_model_path(name, what="reward model", trust_remote_code=trust_remote_code, scalar=True)
    return AutoModelForSequenceClassification.from_pretrained(
        name, dtype=DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code
    )
