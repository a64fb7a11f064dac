"""Reference computations the Ray tests compare against (plain transformers, no Ray)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


@torch.no_grad()
def hf_greedy(model_or_path, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, without the stop token (as vLLM reports it)."""
    model = AutoModelForCausalLM.from_pretrained(model_or_path) if isinstance(model_or_path, str) else model_or_path
    outs = []
    for ids in prompt_ids:
        gen = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )[0, len(ids) :].tolist()
        outs.append(gen[:-1] if gen and gen[-1] == eos_id else gen)
    return outs
