"""From a round's PreferencePairs to padded training tensors, and the data-parallel schedule.

One training *example* is one prompt's group of pairs: `direct` (under x), `refine` (under
t(x, y_l)) and optionally `keep` (under t(x, y_w)). Which of them a loss needs is `loss_terms`.
Each sequence is the chat-formatted user turn followed by the response and EOS; only the
response tokens are scored. Pure module: torch and a tokenizer, no ray, no vllm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evolve_ray.config import TrainingConfig
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.types import PreferencePair

logger = logging.getLogger(__name__)


def loss_terms(cfg: TrainingConfig) -> tuple[str, ...]:
    """The pair kinds one example must hold for `cfg.loss` (keep only when it is weighted)."""
    if cfg.loss == "sft":
        return ("direct", "refine")
    if cfg.loss == "evolve":
        return ("direct", "refine", "keep") if cfg.gamma > 0 else ("direct", "refine")
    return ("direct",)  # dpo, ipo, inpo: direct pairs only


@dataclass(frozen=True)
class TokenSeq:
    """One context+response token sequence; tokens from `prompt_len` on are the response. `cut`:
    tokens dropped to fit training.max_len (the prompt's start first, then the response's end)."""

    ids: list[int]
    prompt_len: int
    cut: int = 0


@dataclass(frozen=True)
class EncodedPair:
    chosen: TokenSeq
    rejected: TokenSeq


@dataclass(frozen=True)
class Example:
    """One prompt's encoded pairs, keyed by kind (the kinds of `loss_terms`)."""

    prompt_id: str
    terms: dict[str, EncodedPair]


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded rows. All three are [R, T]; response_mask is 1 on scored response tokens."""

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def group_pairs(pairs: Sequence[PreferencePair], terms: Sequence[str]) -> list[dict[str, PreferencePair]]:
    """Group pairs by prompt_id (sorted, for determinism); drop groups missing a needed kind.

    Kinds not in `terms` are ignored. Two pairs of one kind for one prompt are an error.
    """
    groups: dict[str, dict[str, PreferencePair]] = {}
    for p in pairs:
        if p.kind not in terms:
            continue
        group = groups.setdefault(p.prompt_id, {})
        if p.kind in group:
            raise ValueError(f"two {p.kind} pairs for prompt {p.prompt_id!r}; expected one per kind")
        group[p.kind] = p
    complete = [groups[k] for k in sorted(groups) if all(t in groups[k] for t in terms)]
    if len(complete) < len(groups):
        logger.warning(
            "dropped %d of %d prompts lacking one of %s pairs", len(groups) - len(complete), len(groups), terms
        )
    return complete


def encode_sequence(prompt_ids: list[int], response_ids: list[int], max_len: int) -> TokenSeq:
    """Join prompt and response within `max_len`: cut the prompt from the left first.

    At least one prompt token is kept (a response token is scored from the token before it);
    only when the response alone is longer is it cut from the right.
    """
    keep_prompt = max(1, max_len - len(response_ids))
    prompt = prompt_ids[-keep_prompt:]
    response = response_ids[: max_len - len(prompt)]
    cut = len(prompt_ids) + len(response_ids) - len(prompt) - len(response)
    return TokenSeq(ids=prompt + response, prompt_len=len(prompt), cut=cut)


def encode_pair(tokenizer: Any, pair: PreferencePair, *, max_len: int) -> EncodedPair:
    """Tokenize one pair: chat-formatted context, then each response + EOS, as generated: a
    response cut at generation.max_new_tokens gets no EOS (the model never ended it; teaching it
    to end there would teach it to stop mid-answer)."""
    prompt = chat_prompt_ids(tokenizer, pair.prompt)

    def response(text: str, cut: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + ([] if cut else [tokenizer.eos_token_id])

    return EncodedPair(
        chosen=encode_sequence(prompt, response(pair.chosen, pair.chosen_cut), max_len),
        rejected=encode_sequence(prompt, response(pair.rejected, pair.rejected_cut), max_len),
    )


def build_examples(pairs: Sequence[PreferencePair], tokenizer: Any, cfg: TrainingConfig) -> list[Example]:
    """A round's pairs as encoded examples, one per prompt that has every kind `cfg.loss` needs."""
    terms = loss_terms(cfg)
    return [
        Example(
            prompt_id=group[terms[0]].prompt_id,
            terms={t: encode_pair(tokenizer, group[t], max_len=cfg.max_len) for t in terms},
        )
        for group in group_pairs(pairs, terms)
    ]


def cut_examples(examples: Sequence[Example]) -> int:
    """How many examples lost tokens to training.max_len (in any sequence of any term)."""
    return sum(any(s.cut for p in e.terms.values() for s in (p.chosen, p.rejected)) for e in examples)


def collate(seqs: Sequence[TokenSeq], *, pad_id: int) -> TokenBatch:
    """Right-pad sequences into a TokenBatch."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
        attn[i, : len(s.ids)] = 1
        resp[i, s.prompt_len : len(s.ids)] = 1
    return TokenBatch(ids, attn, resp)


def collate_term(examples: Sequence[Example], term: str, *, pad_id: int, with_rejected: bool = True) -> TokenBatch:
    """Rows [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}] of one term (chosen only if not with_rejected)."""
    seqs = [e.terms[term].chosen for e in examples]
    if with_rejected:
        seqs += [e.terms[term].rejected for e in examples]
    return collate(seqs, pad_id=pad_id)


# ----------------------------------------------------------------------------------------------
# The data-parallel schedule: identical on every rank, so collectives line up.


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step on one rank: exactly grad_accum micro-batches of example indices
    (a micro-batch may be empty on a rank; the caller then runs a zero-weight dummy so every
    rank does the same collectives), and the number of examples in the step across all ranks.
    """

    micro_batches: list[list[int]]
    global_count: int


def epoch_order(n: int, *, seed: int, round: int, epoch: int) -> list[int]:
    """A seeded permutation of range(n), the same on every rank, different per round and epoch."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + round * 1_009 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def split_even(items: list[int], parts: int) -> list[list[int]]:
    """`parts` consecutive chunks whose sizes differ by at most one (some may be empty)."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(items[start : start + size])
        start += size
    return out


def plan_epoch(
    n: int, *, batch_size: int, grad_accum: int, rank: int, world_size: int, seed: int, round: int, epoch: int
) -> list[StepPlan]:
    """This rank's steps for one epoch over n examples.

    Each step takes the next `batch_size` examples of the shuffled order; rank r takes
    positions r::world_size of that slice, split into grad_accum micro-batches. Every rank gets
    the same number of steps and micro-batches; over all ranks and steps each example appears
    exactly once per epoch.
    """
    order = epoch_order(n, seed=seed, round=round, epoch=epoch)
    plans = []
    for start in range(0, n, batch_size):
        step = order[start : start + batch_size]
        plans.append(StepPlan(split_even(step[rank::world_size], grad_accum), global_count=len(step)))
    return plans


def reference_chunks(n: int, *, micro_batch: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's share (r::world_size) of all n examples in chunks of `micro_batch`, padded with
    empty chunks so that every rank has the same number of chunks (one forward each)."""
    share = list(range(rank, n, world_size))
    per_rank = -(-n // world_size)
    count = -(-per_rank // micro_batch)
    return [share[i * micro_batch : (i + 1) * micro_batch] for i in range(count)]
