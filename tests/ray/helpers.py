"""Reference computations the Ray tests compare against (plain transformers), and the probe that
reads a live generator's greedy output."""

from __future__ import annotations

import ray
import torch
from transformers import AutoModelForCausalLM

from evolve_ray.engines.base import SamplingSpec
from evolve_ray.train.batching import build_examples, loss_terms
from evolve_ray.train.step import term_logps
from tests.pairs import fact_pairs


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


def greedy_ids(generator, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """A live generator actor's greedy continuation of each prompt: a test probe run inside the
    actor's process (`__ray_call__`), so the product class carries no test-only method. A
    generator marked broken refuses it as it refuses work."""

    def probe(gen) -> list[list[int]]:  # a closure: pickled by value, nothing to import in the actor
        gen._check_alive()
        spec = SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
        return [o.token_ids for o in gen.engine.generate(prompt_ids, spec, [0] * len(prompt_ids))]

    return ray.get(generator.__ray_call__.remote(probe))


@torch.no_grad()
def chosen_logp(model: torch.nn.Module, cfg, tokenizer, facts, round_: int) -> float:
    """Mean log-prob of the direct chosen responses of `facts`' pairs under `model`, computed in
    this process the way the trainer computes its train/ref_chosen_logp."""
    examples = build_examples(
        fact_pairs(facts, template=cfg.refinement.template, round_=round_), tokenizer, cfg.training
    )
    logps = term_logps(
        model.eval(),
        examples,
        loss_terms(cfg.training),
        cfg.training,
        pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"),
    )
    return logps[:, 0, 0].mean().item()
