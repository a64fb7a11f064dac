"""Tiny models built locally, with no hub: a byte-level tokenizer with a chat template, a random
causal LM (Llama or Qwen2 family) and a sequence-classification reward model of the same family.
`build_tiny_chat` writes a pair shaped like a Llama-3 chat model and its reward model instead:
Llama-3 special tokens and chat template, pad == EOS == `<|eot_id|>`, bfloat16 on disk.

Everything is seeded, so the same call writes the same weights. Head size 32 (hidden 64, 2 heads)
is one vLLM's CPU attention backend accepts (docs/platform.md: head_dim 16 dies on first generate).
The saved directories load through the same code a real model path or hub id does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
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
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Meta-Llama-3-8B-Instruct's template (content trimmed, BOS before the first message).
LLAMA3_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _byte_level(specials: list[str]) -> Tokenizer:
    """One token per byte (so one per ASCII character), then `specials`. No merges are learned, so
    digits stay single tokens: a tiny model can learn arithmetic on it."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with this project's own chat specials (pad and EOS differ)."""
    tok = _byte_level(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def build_chat_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level vocabulary with Llama-3's special tokens and chat template.

    As in Llama-3 Instruct: the tokenizer adds `<|begin_of_text|>` to plain encodes (the chat
    template writes its own, and apply_chat_template encodes without specials), EOS is
    `<|eot_id|>`, and pad is EOS too (what `load_tokenizer` falls back to for Llama-3, and what
    Skywork reward models ship), so a trailing EOS cannot be told from padding by its id.
    """
    tok = _byte_level(LLAMA3_SPECIAL_TOKENS)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|eot_id|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
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


# Head size 32, one vLLM's CPU attention accepts. (TinySpec's fields are also the shipped warm
# start's recorded spec: a new field, e.g. for grouped-query attention, would make it stale.)
CHAT_SPEC = TinySpec(hidden=128, heads=4, intermediate=256)


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
        bos_token_id=tokenizer.bos_token_id,
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
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
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


def build_tiny_chat(
    out: str | Path, spec: TinySpec = CHAT_SPEC, *, dtype: Literal["bfloat16", "float32"] = "bfloat16"
) -> dict[str, Path]:
    """Write `out/policy` (LlamaForCausalLM) and `out/reward` (one-label
    LlamaForSequenceClassification), each with the Llama-3-style tokenizer, stored in `dtype`
    (bfloat16, as real checkpoints ship). Returns their paths."""
    if spec.family != "llama":
        raise ValueError(f"build_tiny_chat builds Llama-3-style models; spec.family is {spec.family!r}")
    out = Path(out)
    tokenizer = build_chat_tokenizer()
    policy, reward = build_policy(spec, tokenizer), build_reward(spec, tokenizer)
    for model in (policy, reward):
        # Random init in float32, then cast: the same seed gives the same weights in either dtype.
        model.to(DTYPES[dtype])  # type: ignore[arg-type]  # transformers types `to` as a bound method
    return {"policy": save(policy, tokenizer, out / "policy"), "reward": save(reward, tokenizer, out / "reward")}
