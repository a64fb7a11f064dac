"""Preference and SFT losses as pure functions, and the data-parallel-exact reduction.

Every loss returns (per_example_loss [B], metrics) where metrics holds plain floats computed
from detached tensors. Inputs are summed (or mean) sequence log-probs from `sequence_logprobs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, float]


@dataclass(frozen=True)
class PairLogps:
    """Log-probs of one batch of (chosen, rejected) responses under the policy and the reference.

    Args:
        pi_chosen, pi_rejected, ref_chosen, ref_rejected: [B] each.
    """

    pi_chosen: Tensor
    pi_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor

    def margin(self) -> Tensor:
        """[B] log-ratio margin m = (pi_c - ref_c) - (pi_r - ref_r)."""
        return (self.pi_chosen - self.ref_chosen) - (self.pi_rejected - self.ref_rejected)


def _reward_metrics(pair: PairLogps, *, beta: float) -> Metrics:
    """Implicit-reward diagnostics (chosen/rejected reward, their margin, accuracy), detached."""
    chosen = beta * (pair.pi_chosen - pair.ref_chosen).detach()
    rejected = beta * (pair.pi_rejected - pair.ref_rejected).detach()
    margin = chosen - rejected
    return {
        "chosen_reward": chosen.mean().item(),
        "rejected_reward": rejected.mean().item(),
        "margin": margin.mean().item(),
        "reward_acc": (margin > 0).float().mean().item(),
    }


def _squared_half(pair: PairLogps, *, beta: float) -> Tensor:
    """[B] (beta * m - 1/2)^2: the squared-error form shared by IPO and EVOLVE's refinement terms."""
    return (beta * pair.margin() - 0.5) ** 2


def dpo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Sigmoid DPO loss (Rafailov et al. 2023), with conservative label smoothing.

    loss = -(1 - ls) * log sigmoid(beta * m) - ls * log sigmoid(-beta * m),
    m = (pi_c - ref_c) - (pi_r - ref_r).

    Args:
        pi_chosen, pi_rejected: [B] policy log-probs of chosen / rejected responses.
        ref_chosen, ref_rejected: [B] reference log-probs of the same responses.
        beta: KL strength.
        label_smoothing: probability that a label is flipped (0 is plain DPO).

    Returns:
        ([B] per-example loss, metrics).
    """
    pair = PairLogps(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    logits = beta * pair.margin()
    loss = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, _reward_metrics(pair, beta=beta)


def ipo_loss(
    pi_chosen: Tensor,
    pi_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
) -> tuple[Tensor, Metrics]:
    """IPO loss (Azar et al. 2023, arXiv 2310.12036) in docs/method.md's scaling: (beta * m - 1/2)^2.

    This equals beta^2 * (m - 1/(2 beta))^2, i.e. the paper's (h - 1/(2 tau))^2 with tau = beta,
    scaled by beta^2; the minimiser is the same, beta * m = 1/2.

    Args:
        pi_chosen, pi_rejected: [B] policy log-probs of chosen / rejected responses.
        ref_chosen, ref_rejected: [B] reference log-probs of the same responses.
        beta: KL strength.

    Returns:
        ([B] per-example loss, metrics).
    """
    pair = PairLogps(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    return _squared_half(pair, beta=beta), _reward_metrics(pair, beta=beta)


def evolve_loss(
    direct: PairLogps,
    refine: PairLogps,
    keep: PairLogps | None,
    *,
    beta: float,
    alpha: float,
    gamma: float,
    direct_loss: Literal["dpo", "ipo"],
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """EVOLVE loss (Zeng et al., arXiv 2502.05605): L_direct + alpha * L_SR + gamma * L_keep.

    One example is one prompt's (x, y_w, y_l): `direct` is scored under x, `refine` under
    t(x, y_l), `keep` under t(x, y_w). L_SR and L_keep are (beta * m - 1/2)^2, whose optimum
    beta * m = 1/2 follows from p(y_w > y_l) = 1 against p(y > y) = 1/2.

    Args:
        direct: [B] log-probs under the question x.
        refine: [B] log-probs under the refinement prompt t(x, y_l).
        keep: [B] log-probs under t(x, y_w), or None (required when gamma > 0).
        beta: KL strength of all three terms.
        alpha: weight of the refinement term.
        gamma: weight of the keep term.
        direct_loss: "dpo" (sigmoid) or "ipo" (squared) form of the direct term.
        label_smoothing: DPO label smoothing of the direct term (dpo only).

    Returns:
        ([B] per-example loss, metrics).
    """
    if direct_loss == "dpo":
        l_direct, metrics = dpo_loss(*_fields(direct), beta=beta, label_smoothing=label_smoothing)
    elif direct_loss == "ipo":
        l_direct, metrics = ipo_loss(*_fields(direct), beta=beta)
    else:
        raise ValueError(f"direct_loss: {direct_loss!r} is not one of dpo, ipo")
    l_refine = _squared_half(refine, beta=beta)
    loss = l_direct + alpha * l_refine
    refine_m = _reward_metrics(refine, beta=beta)
    metrics |= {
        "direct_loss": l_direct.detach().mean().item(),
        "refine_loss": l_refine.detach().mean().item(),
        "refine_margin": refine_m["margin"],
        "refine_acc": refine_m["reward_acc"],
    }
    if gamma > 0 and keep is None:
        raise ValueError("evolve_loss: gamma > 0 needs keep log-probs (selection.keep_pairs=true)")
    if keep is not None:
        l_keep = _squared_half(keep, beta=beta)
        loss = loss + gamma * l_keep
        keep_m = _reward_metrics(keep, beta=beta)
        metrics |= {"keep_loss": l_keep.detach().mean().item(), "keep_margin": keep_m["margin"]}
    return loss, metrics


def _fields(pair: PairLogps) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return pair.pi_chosen, pair.pi_rejected, pair.ref_chosen, pair.ref_rejected


def inpo_loss(
    pair: PairLogps, prev_chosen: Tensor, prev_rejected: Tensor, *, eta: float, tau: float
) -> tuple[Tensor, Metrics]:
    """INPO loss (Zhang et al., arXiv 2407.00617): (h - 1/(2 eta))^2.

    h = (pi_c - pi_r) - (tau/eta) (ref_c - ref_r) - ((eta - tau)/eta) (prev_c - prev_r), where
    prev is the previous round's policy pi_t. With eta == tau this is IPO(beta=eta) / eta^2.

    Args:
        pair: [B] policy and reference log-probs.
        prev_chosen, prev_rejected: [B] log-probs under the previous round's policy.
        eta: learning-rate-like step size (paper: 0.005).
        tau: KL strength towards the reference (paper: eta / 3).

    Returns:
        ([B] per-example loss, metrics; rewards use beta = eta, plus the mean of h).
    """
    h = (
        (pair.pi_chosen - pair.pi_rejected)
        - (tau / eta) * (pair.ref_chosen - pair.ref_rejected)
        - ((eta - tau) / eta) * (prev_chosen - prev_rejected)
    )
    loss = (h - 1.0 / (2.0 * eta)) ** 2
    return loss, _reward_metrics(pair, beta=eta) | {"inpo_h": h.detach().mean().item()}


def sft_loss(
    logp_direct: Tensor, logp_refine: Tensor, *, direct_weight: float, refine_weight: float
) -> tuple[Tensor, Metrics]:
    """Self-refinement-aware SFT (EVOLVE stage 1, arXiv 2502.05605): -(w_d logp(y_w|x) + w_r logp(y_w|t(x,y_l))).

    Args:
        logp_direct: [B] policy log-prob of y_w given x.
        logp_refine: [B] policy log-prob of y_w given t(x, y_l).
        direct_weight, refine_weight: term weights.

    Returns:
        ([B] per-example loss, metrics with the mean negative log-likelihood of each term).
    """
    loss = -(direct_weight * logp_direct + refine_weight * logp_refine)
    return loss, {
        "nll_direct": -logp_direct.detach().mean().item(),
        "nll_refine": -logp_refine.detach().mean().item(),
    }


def global_count(
    local_count: int,
    all_reduce: Callable[[Tensor], object] | None = None,
    *,
    device: torch.device | str = "cpu",
) -> int:
    """Number of examples across all data-parallel ranks for one optimizer step.

    Args:
        local_count: examples on this rank (summed over its accumulation micro-batches).
        all_reduce: an in-place SUM all-reduce such as `torch.distributed.all_reduce`; None on a
            single process.
        device: where the count tensor lives (a CUDA device for NCCL).

    Returns:
        The global example count.
    """
    count = torch.tensor([local_count], dtype=torch.long, device=device)
    if all_reduce is not None:
        all_reduce(count)
    return int(count.item())


def dp_scaled_loss(per_example: Tensor, *, global_count: int, world_size: int) -> Tensor:
    """Local loss whose DDP-averaged gradient equals the gradient of the global mean.

    DDP averages gradients over ranks (divides by world_size), so each rank returns
    local_sum * world_size / global_count; averaging gives sum_all / global_count, exact for
    uneven shards, where a per-rank mean would over-weight the smaller shards.

    Args:
        per_example: [B_local] per-example losses, or a scalar local sum.
        global_count: examples across all ranks (see `global_count`).
        world_size: number of data-parallel ranks.

    Returns:
        Scalar loss to call backward() on.
    """
    if global_count <= 0:
        raise ValueError(f"global_count must be positive, got {global_count}")
    return per_example.sum() * (world_size / global_count)
