"""transformers backend: the same interface as the vLLM one, for where vLLM does not import."""

from __future__ import annotations

import torch

from evolve_ray.engines.base import GenOutput, SamplingSpec
from evolve_ray.models.loading import load_policy, load_tokenizer


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_path: str, *, dtype: str, trust_remote_code: bool) -> None:
        self.model = load_policy(model_path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[GenOutput]:
        # Requests with the same seed and prompt give the same output, batch or not: each prompt
        # is generated on its own with its own seed (slower than batching, but reproducible).
        return [self._one(p, spec, s) for p, s in zip(prompts, seeds, strict=True)]

    def _one(self, prompt: list[int], spec: SamplingSpec, seed: int) -> GenOutput:
        torch.manual_seed(seed)
        eos = self.tokenizer.eos_token_id
        sample = spec.temperature > 0
        out = self.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=spec.max_new_tokens,
            do_sample=sample,
            temperature=spec.temperature if sample else None,
            top_p=spec.top_p if sample else None,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
        finish = "stop" if out and out[-1] == eos else "length"
        if out and out[-1] == eos:
            out = out[:-1]  # vLLM leaves the stop token out of its output; match it
        return GenOutput(out, str(self.tokenizer.decode(out, skip_special_tokens=True)), finish)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights, strict=True)
