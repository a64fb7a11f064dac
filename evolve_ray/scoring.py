"""Scorers: a reward model's forward pass or a task's exact verifier. No ray here.

A reward model scores the whole conversation [user: x, assistant: y] through its own chat
template, the way it was trained; non-finite outputs become invalid scores that are counted,
never passed on as numbers. Both backends return the same quantity, the raw logit of the
sequence-classification head (vLLM's default sigmoid is turned off in VLLMEngine.classify), so
selection.min_margin, min_chosen_score and tie_tolerance mean the same on either. torch and
transformers are imported by the reward-model scorer only: a verifier scorer's actor starts
without them.
"""

from __future__ import annotations

from typing import Protocol

from evolve_ray.config import Config
from evolve_ray.tasks.base import Task
from evolve_ray.types import Candidate, Prompt, Score


class Scorer(Protocol):
    def score(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]: ...


def conversation_ids(tokenizer, question: str, answer: str) -> list[int]:
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


class RewardModelScorer:
    def __init__(self, cfg: Config, model_path: str) -> None:
        from evolve_ray.models.loading import load_reward, load_tokenizer

        self.cfg = cfg
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
        self.backend = cfg.scoring.backend
        if self.backend == "vllm":
            from evolve_ray.engines.vllm_engine import VLLMEngine

            m = cfg.model
            self.engine = VLLMEngine(
                model_path,
                dtype=m.dtype,
                max_model_len=m.max_model_len,
                kv_cache_mib=cfg.generation.kv_cache_mib,
                enforce_eager=True,
                tensor_parallel_size=1,
                seed=0,
                trust_remote_code=m.trust_remote_code,
                runner="pooling",
            )
        else:
            self.model = load_reward(
                model_path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
            ).eval()

    def raw_scores(self, ids: list[list[int]]) -> list[float]:
        if self.backend == "vllm":
            return self.engine.classify(ids)
        return self._forward(ids)

    def _forward(self, ids: list[list[int]]) -> list[float]:
        import torch

        from evolve_ray.core.logprobs import pad_rows

        input_ids, mask = pad_rows(ids, self.tokenizer.pad_token_id)  # right: the model reads the last non-pad
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return logits[:, 0].float().tolist()

    def score(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]:
        limit = self.cfg.model.max_model_len
        ids = [conversation_ids(self.tokenizer, p.question, c.text)[-limit:] for c, p in batch]
        out: list[Score] = []
        mb = self.cfg.scoring.micro_batch
        for i in range(0, len(batch), mb):
            raws = self.raw_scores(ids[i : i + mb])
            out.extend(Score.of(c.id, r) for (c, _), r in zip(batch[i : i + mb], raws, strict=True))
        return out


class VerifierScorer:
    """1.0 when the task's verifier accepts the answer, else 0.0."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def score(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]:
        return [Score(c.id, 1.0 if self.task.verify(p, c.text) else 0.0) for c, p in batch]
