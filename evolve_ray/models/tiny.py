"""Tiny models built locally, with no hub: a byte-level tokenizer with a chat template, a random
causal LM (Llama or Qwen2 family) and a sequence-classification reward model of the same family.

Everything is seeded, so the same call writes the same weights. Head size 32 (hidden 64, 2 heads)
is one vLLM's CPU attention backend accepts (docs/platform.md: head_dim 16 dies on first generate).
The saved directories load through the same code a real model path or hub id does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

Family = Literal["llama", "qwen2"]

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: one token per byte (so one per ASCII character) plus chat specials.

    No merges are learned, so digits stay single tokens: a tiny model can learn arithmetic on it.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


@dataclass(frozen=True)
class TinySpec:
    family: Family = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    max_positions: int = 1024
    seed: int = 0


def _config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, **extra: object):
    vocab = -(-len(tokenizer) // 64) * 64  # round up: friendlier shapes for the kernels
    common = dict(
        vocab_size=vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **extra,
    )
    cls = LlamaConfig if spec.family == "llama" else Qwen2Config
    return cls(**common)


def build_policy(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    torch.manual_seed(spec.seed)
    cls = LlamaForCausalLM if spec.family == "llama" else Qwen2ForCausalLM
    model = cls(_config(spec, tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def build_reward(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    torch.manual_seed(spec.seed + 1)
    cls = LlamaForSequenceClassification if spec.family == "llama" else Qwen2ForSequenceClassification
    return cls(_config(spec, tokenizer, num_labels=1))


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny(out: str | Path, spec: TinySpec = TinySpec()) -> dict[str, Path]:
    """Write `out/policy` and `out/reward` (each with the tokenizer). Returns their paths."""
    out = Path(out)
    tokenizer = build_tokenizer()
    return {
        "policy": save(build_policy(spec, tokenizer), tokenizer, out / "policy"),
        "reward": save(build_reward(spec, tokenizer), tokenizer, out / "reward"),
    }
