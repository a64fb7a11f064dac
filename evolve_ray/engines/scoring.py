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

import logging
from typing import TYPE_CHECKING, Protocol

from evolve_ray.config import Config
from evolve_ray.tasks.base import Task
from evolve_ray.types import Candidate, Prompt, Score

if TYPE_CHECKING:  # torch and transformers load with the reward-model scorer only
    from torch import Tensor
    from transformers import PreTrainedModel


class Scorer(Protocol):
    def score(self, batch: list[tuple[Candidate, Prompt]]) -> list[Score]: ...


def conversation_ids(tokenizer, question: str, answer: str) -> list[int]:
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def last_token_logits(model: PreTrainedModel, ids: list[list[int]], pad_id: int) -> Tensor:
    """The reward model's logits read at each conversation's true last token, as vLLM pools them.

    HF's *ForSequenceClassification reads the "last token that is not the pad id": when pad is EOS
    (Llama-3, Skywork RMs) and the chat template ends in EOS, that skips the trailing EOS and reads
    the token before it, even for an unpadded conversation. Given `inputs_embeds` instead of ids,
    HF has no ids to search and reads the last position, which left padding makes every row's last
    token; position ids counted from the mask keep each row's positions as if it were unpadded.
    Only the model's own input embeddings and forward are used, so any decoder architecture works
    (an encoder that pools its first token, like BERT's CLS, would want right padding instead).

    Args:
        model: a one-label sequence-classification model.
        ids: B token-id rows of any lengths.
        pad_id: filler id for the padding (masked out, so its value does not matter).

    Returns:
        [B, num_labels] logits.
    """
    from evolve_ray.core.logprobs import pad_rows

    input_ids, mask = pad_rows(ids, pad_id, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds = model.get_input_embeddings()(input_ids.to(model.device))
    return model(
        inputs_embeds=embeds, attention_mask=mask.to(model.device), position_ids=positions.to(model.device)
    ).logits


class _EmbedsPoolingFilter(logging.Filter):
    """Drops HF's warning that a classifier fed `inputs_embeds` "will not detect padding tokens":
    last_token_logits feeds embeddings so that no pad id is searched for, and left-pads so that
    the last position is every row's true last token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not detect padding tokens in `inputs_embeds`" not in record.getMessage()


_EMBEDS_FILTER = _EmbedsPoolingFilter()


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
            text_config = self.model.config.get_text_config()
            if text_config.pad_token_id is None:
                # HF refuses batches of more than one without a pad id in the config, although
                # last_token_logits never searches for it; the tokenizer's (pad, else EOS) will do.
                text_config.pad_token_id = self.tokenizer.pad_token_id
            # The warning comes from the module that defines the classifier's forward (any architecture).
            logging.getLogger(type(self.model).forward.__module__).addFilter(_EMBEDS_FILTER)

    def raw_scores(self, ids: list[list[int]]) -> list[float]:
        if self.backend == "vllm":
            return self.engine.classify(ids)
        return self._forward(ids)

    def _forward(self, ids: list[list[int]]) -> list[float]:
        import torch

        with torch.no_grad():
            return last_token_logits(self.model, ids, self.tokenizer.pad_token_id)[:, 0].float().tolist()

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
