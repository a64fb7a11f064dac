"""Per-sequence log-probabilities of response tokens under a causal language model."""

from __future__ import annotations

import torch
from torch import Tensor


def sequence_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor, *, average: bool = False) -> Tensor:
    """Summed (or mean per token) log-probability of the masked response tokens of each sequence.

    Token t is scored with the logits at position t-1, so `response_mask[:, 0]` is ignored (no
    token precedes it). Padding may sit on either side: only the mask decides what is scored.
    The log-softmax runs in float32 one sequence at a time, so a bf16 batch never holds a
    float32 [B, T, V] copy.

    Args:
        logits: [B, T, V] model outputs for `input_ids`.
        input_ids: [B, T] token ids.
        response_mask: [B, T] 1 on response tokens to score, 0 on prompt and padding.
        average: divide each sum by its number of scored tokens (0 stays 0 for empty masks).

    Returns:
        [B] float32 log-probabilities, differentiable w.r.t. `logits`.
    """
    if logits.shape[:2] != input_ids.shape or input_ids.shape != response_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)}, "
            f"response_mask {tuple(response_mask.shape)}"
        )
    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].to(torch.float32)
    per_token = torch.stack(
        [
            torch.log_softmax(logits[i, :-1].float(), dim=-1).gather(-1, targets[i].unsqueeze(-1)).squeeze(-1)
            for i in range(logits.shape[0])
        ]
    )  # [B, T-1]
    total = (per_token * mask).sum(dim=-1)
    if average:
        return total / mask.sum(dim=-1).clamp(min=1.0)
    return total


def pad_rows(rows: list[list[int]], pad_id: int, *, left: bool = False) -> tuple[Tensor, Tensor]:
    """Token-id rows as a padded [B, T] batch and its attention mask. Left padding for
    generation (every row ends at the last column); right padding for a reward model that reads
    the last non-pad position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
