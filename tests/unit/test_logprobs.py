"""sequence_logprobs against a slow per-token reference, for left and right padding."""

from __future__ import annotations

import math

import pytest
import torch

from evolve_ray.core.logprobs import sequence_logprobs

V = 11


def _reference(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, average: bool) -> list[float]:
    """Token t scored with logits at t-1, via an explicit log-sum-exp in float64."""
    out = []
    for b in range(ids.shape[0]):
        total, n = 0.0, 0
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                row = [float(x) for x in logits[b, t - 1]]
                lse = math.log(sum(math.exp(x) for x in row))
                total += row[int(ids[b, t])] - lse
                n += 1
        out.append(total / max(n, 1) if average else total)
    return out


def _batch(side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three sequences (prompt len, response len) padded to T=9 on `side`; the logits of a token do
    not depend on the padding, so both layouts must give the same log-probs."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2), (5, 4)]
    T = 9
    logits = torch.zeros(len(shapes), T, V)
    ids = torch.zeros(len(shapes), T, dtype=torch.long)
    mask = torch.zeros(len(shapes), T, dtype=torch.long)
    for b, (p, r) in enumerate(shapes):
        n = p + r
        seq_logits = torch.randn(n, V, generator=gen)
        seq_ids = torch.randint(0, V, (n,), generator=gen)
        seq_mask = torch.tensor([0] * p + [1] * r)
        start = 0 if side == "right" else T - n
        logits[b, start : start + n] = seq_logits
        ids[b, start : start + n] = seq_ids
        mask[b, start : start + n] = seq_mask
        logits[b, :start] = 100.0  # garbage under left padding must not leak in
        logits[b, start + n :] = -100.0
    return logits, ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("average", [False, True])
def test_matches_slow_reference(side: str, average: bool) -> None:
    logits, ids, mask = _batch(side)
    got = sequence_logprobs(logits, ids, mask, average=average)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(_reference(logits, ids, mask, average), abs=1e-5)


def test_left_and_right_padding_agree() -> None:
    left = sequence_logprobs(*_batch("left"))
    right = sequence_logprobs(*_batch("right"))
    torch.testing.assert_close(left, right)
    assert (left < 0).all()


def test_mean_is_sum_over_token_count() -> None:
    logits, ids, mask = _batch("right")
    total = sequence_logprobs(logits, ids, mask)
    mean = sequence_logprobs(logits, ids, mask, average=True)
    torch.testing.assert_close(mean, total / torch.tensor([4.0, 2.0, 4.0]))


def test_bf16_logits_are_scored_in_float32_and_differentiable() -> None:
    logits, ids, mask = _batch("left")
    low = logits.to(torch.bfloat16).requires_grad_(True)
    got = sequence_logprobs(low, ids, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, sequence_logprobs(low.detach().float(), ids, mask))
    got.sum().backward()
    assert low.grad is not None and low.grad.abs().sum() > 0
    # Positions whose next token is unscored get no gradient at all.
    unscored_next = torch.cat([mask[:, 1:], torch.zeros(3, 1, dtype=torch.long)], dim=1) == 0
    assert low.grad[unscored_next].abs().sum() == 0


def test_empty_mask_gives_zero() -> None:
    logits, ids, mask = _batch("right")
    mask[1] = 0
    assert sequence_logprobs(logits, ids, mask, average=True)[1].item() == 0.0
    assert sequence_logprobs(logits, ids, mask)[1].item() == 0.0


def test_shape_mismatch_raises() -> None:
    logits, ids, mask = _batch("right")
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_logprobs(logits[:, :-1], ids, mask)


def test_pad_rows_left_and_right() -> None:
    from evolve_ray.core.logprobs import pad_rows

    ids, mask = pad_rows([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
