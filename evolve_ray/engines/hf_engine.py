"""transformers backend: the same interface as the vLLM one, for where vLLM does not import.

LoRA adapters are served through peft: the base wrapped once in a PeftModel, each new adapter
loaded under a new name and made active, the previous one deleted.
"""

from __future__ import annotations

import torch

from evolve_ray.engines.base import GenOutput, SamplingSpec
from evolve_ray.models.loading import load_policy, load_tokenizer


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_path: str, *, dtype: str, trust_remote_code: bool, tokenizer: str | None = None) -> None:
        self.model = load_policy(model_path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
        # model.tokenizer when set: its EOS ends a response and it decodes the text, as it built the prompt.
        self.tokenizer = load_tokenizer(tokenizer or model_path, trust_remote_code=trust_remote_code)
        self._adapter_loads = 0

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

    def load_adapter(self, path: str, name: str) -> None:
        from peft import PeftModel

        self._adapter_loads += 1
        name = f"{name}-{self._adapter_loads}"
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            return
        previous = self.model.active_adapter
        self.model.load_adapter(path, adapter_name=name)
        self.model.set_adapter(name)
        self.model.delete_adapter(previous)
        self.model.eval()
