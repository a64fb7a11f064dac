"""Preference and SFT losses as pure functions, a registry of them by name, and the
data-parallel-exact reduction.

Every loss has one signature (`LossFn`): the batch's log-probs by pair kind, and the
hyper-parameters as keyword values, of which each loss reads its own. It returns
(per_example_loss [B], metrics) where metrics holds plain floats computed from detached tensors.
Inputs are summed (or mean) sequence log-probs from `sequence_logprobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, float]
DirectLoss = Literal["dpo", "ipo"]


@dataclass(frozen=True)
class PairLogps:
    """[B] log-probs of one batch of (chosen, rejected) responses of one pair kind.

    Args:
        pi_chosen, pi_rejected: under the policy being trained.
        ref_chosen, ref_rejected: under the reference policy (None for sft, which has none).
        prev_chosen, prev_rejected: under the round-start policy, INPO's pi_t (None for the others).
    """

    pi_chosen: Tensor
    pi_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    prev_chosen: Tensor | None = None
    prev_rejected: Tensor | None = None

    def refs(self) -> tuple[Tensor, Tensor]:
        """(ref_chosen, ref_rejected); a ValueError when the batch has no reference log-probs."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs the reference policy's log-probs")
        return self.ref_chosen, self.ref_rejected

    def prevs(self) -> tuple[Tensor, Tensor]:
        """(prev_chosen, prev_rejected); a ValueError when the batch has no round-start log-probs."""
        if self.prev_chosen is None or self.prev_rejected is None:
            raise ValueError("this loss needs the round-start policy's log-probs (inpo)")
        return self.prev_chosen, self.prev_rejected

    def margin(self) -> Tensor:
        """[B] log-ratio margin m = (pi_c - ref_c) - (pi_r - ref_r)."""
        ref_chosen, ref_rejected = self.refs()
        return (self.pi_chosen - ref_chosen) - (self.pi_rejected - ref_rejected)


# A batch's log-probs by pair kind: "direct" (under x), "refine" (under t(x, y_l)), "keep" (under
# t(x, y_w)). A loss reads the kinds it needs (train/batching.py `loss_terms`).
Pairs = Mapping[str, PairLogps]


class LossFn(Protocol):
    """The one signature of every loss in `LOSSES`: each takes the hyper-parameters it uses by
    these names and ignores the others (`**_`), so that a loss is called the same whatever it is."""

    def __call__(
        self,
        pairs: Pairs,
        /,
        *,
        beta: float,
        alpha: float,
        gamma: float,
        direct_loss: DirectLoss,
        label_smoothing: float,
        eta: float,
        tau: float,
        direct_weight: float,
        refine_weight: float,
    ) -> tuple[Tensor, Metrics]: ...


def _reward_metrics(pair: PairLogps, *, beta: float) -> Metrics:
    """Implicit-reward diagnostics (chosen/rejected reward, their margin, accuracy), detached."""
    ref_chosen, ref_rejected = pair.refs()
    chosen = beta * (pair.pi_chosen - ref_chosen).detach()
    rejected = beta * (pair.pi_rejected - ref_rejected).detach()
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


def dpo_loss(pairs: Pairs, /, *, beta: float, label_smoothing: float = 0.0, **_: object) -> tuple[Tensor, Metrics]:
    """Sigmoid DPO loss (Rafailov et al. 2023) on the direct pairs, with conservative label smoothing.

    loss = -(1 - ls) * log sigmoid(beta * m) - ls * log sigmoid(-beta * m),
    m = (pi_c - ref_c) - (pi_r - ref_r).

    Args:
        pairs: "direct": [B] policy and reference log-probs of chosen / rejected responses.
        beta: KL strength.
        label_smoothing: probability that a label is flipped (0 is plain DPO).

    Returns:
        ([B] per-example loss, metrics).
    """
    pair = pairs["direct"]
    logits = beta * pair.margin()
    loss = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, _reward_metrics(pair, beta=beta)


def ipo_loss(pairs: Pairs, /, *, beta: float, **_: object) -> tuple[Tensor, Metrics]:
    """IPO loss (Azar et al. 2023, arXiv 2310.12036) in docs/method.md's scaling: (beta * m - 1/2)^2.

    This equals beta^2 * (m - 1/(2 beta))^2, i.e. the paper's (h - 1/(2 tau))^2 with tau = beta,
    scaled by beta^2; the minimiser is the same, beta * m = 1/2.

    Args:
        pairs: "direct": [B] policy and reference log-probs of chosen / rejected responses.
        beta: KL strength.

    Returns:
        ([B] per-example loss, metrics).
    """
    pair = pairs["direct"]
    return _squared_half(pair, beta=beta), _reward_metrics(pair, beta=beta)


def evolve_loss(
    pairs: Pairs,
    /,
    *,
    beta: float,
    alpha: float,
    gamma: float,
    direct_loss: DirectLoss,
    label_smoothing: float = 0.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """EVOLVE loss (Zeng et al., arXiv 2502.05605): L_direct + alpha * L_SR + gamma * L_keep.

    One example is one prompt's (x, y_w, y_l): "direct" is scored under x, "refine" under
    t(x, y_l), "keep" under t(x, y_w). L_SR and L_keep are (beta * m - 1/2)^2, whose optimum
    beta * m = 1/2 follows from p(y_w > y_l) = 1 against p(y > y) = 1/2.

    Args:
        pairs: [B] log-probs of "direct", "refine" and, required when gamma > 0, "keep".
        beta: KL strength of all three terms.
        alpha: weight of the refinement term.
        gamma: weight of the keep term.
        direct_loss: "dpo" (sigmoid) or "ipo" (squared) form of the direct term.
        label_smoothing: DPO label smoothing of the direct term (dpo only).

    Returns:
        ([B] per-example loss, metrics).
    """
    if direct_loss == "dpo":
        l_direct, metrics = dpo_loss(pairs, beta=beta, label_smoothing=label_smoothing)
    elif direct_loss == "ipo":
        l_direct, metrics = ipo_loss(pairs, beta=beta)
    else:
        raise ValueError(f"direct_loss: {direct_loss!r} is not one of dpo, ipo")
    refine = pairs["refine"]
    l_refine = _squared_half(refine, beta=beta)
    loss = l_direct + alpha * l_refine
    refine_m = _reward_metrics(refine, beta=beta)
    metrics |= {
        "direct_loss": l_direct.detach().mean().item(),
        "refine_loss": l_refine.detach().mean().item(),
        "refine_margin": refine_m["margin"],
        "refine_acc": refine_m["reward_acc"],
    }
    keep = pairs.get("keep")
    if gamma > 0 and keep is None:
        raise ValueError("evolve_loss: gamma > 0 needs keep log-probs (selection.keep_pairs=true)")
    if keep is not None:
        l_keep = _squared_half(keep, beta=beta)
        loss = loss + gamma * l_keep
        keep_m = _reward_metrics(keep, beta=beta)
        metrics |= {"keep_loss": l_keep.detach().mean().item(), "keep_margin": keep_m["margin"]}
    return loss, metrics


def inpo_loss(pairs: Pairs, /, *, eta: float, tau: float, **_: object) -> tuple[Tensor, Metrics]:
    """INPO loss (Zhang et al., arXiv 2407.00617) on the direct pairs: (h - 1/(2 eta))^2.

    h = (pi_c - pi_r) - (tau/eta) (ref_c - ref_r) - ((eta - tau)/eta) (prev_c - prev_r), where
    prev is the previous round's policy pi_t. With eta == tau this is IPO(beta=eta) / eta^2.

    Args:
        pairs: "direct": [B] policy, reference and previous-round policy log-probs.
        eta: learning-rate-like step size (paper: 0.005).
        tau: KL strength towards the reference (paper: eta / 3).

    Returns:
        ([B] per-example loss, metrics; rewards use beta = eta, plus the mean of h).
    """
    pair = pairs["direct"]
    ref_chosen, ref_rejected = pair.refs()
    prev_chosen, prev_rejected = pair.prevs()
    h = (
        (pair.pi_chosen - pair.pi_rejected)
        - (tau / eta) * (ref_chosen - ref_rejected)
        - ((eta - tau) / eta) * (prev_chosen - prev_rejected)
    )
    loss = (h - 1.0 / (2.0 * eta)) ** 2
    return loss, _reward_metrics(pair, beta=eta) | {"inpo_h": h.detach().mean().item()}


def sft_loss(pairs: Pairs, /, *, direct_weight: float, refine_weight: float, **_: object) -> tuple[Tensor, Metrics]:
    """Self-refinement-aware SFT (EVOLVE stage 1, arXiv 2502.05605): -(w_d logp(y_w|x) + w_r logp(y_w|t(x,y_l))).

    Args:
        pairs: the policy's [B] chosen log-probs of "direct" (y_w given x) and "refine" (y_w given
            t(x, y_l)); rejected and reference log-probs are not read.
        direct_weight, refine_weight: term weights.

    Returns:
        ([B] per-example loss, metrics with the mean negative log-likelihood of each term).
    """
    logp_direct, logp_refine = pairs["direct"].pi_chosen, pairs["refine"].pi_chosen
    loss = -(direct_weight * logp_direct + refine_weight * logp_refine)
    return loss, {
        "nll_direct": -logp_direct.detach().mean().item(),
        "nll_refine": -logp_refine.detach().mean().item(),
    }


# training.loss -> its loss (tests/unit/test_losses.py checks the names against the schema's choices).
LOSSES: dict[str, LossFn] = {
    "sft": sft_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "evolve": evolve_loss,
    "inpo": inpo_loss,
}


def dp_scaled_loss(per_example: Tensor, *, global_count: int, world_size: int) -> Tensor:
    """Local loss whose DDP-averaged gradient equals the gradient of the global mean.

    DDP averages gradients over ranks (divides by world_size), so each rank returns
    local_sum * world_size / global_count; averaging gives sum_all / global_count, exact for
    uneven shards, where a per-rank mean would over-weight the smaller shards.

    Args:
        per_example: [B_local] per-example losses, or a scalar local sum.
        global_count: examples across all ranks in this optimizer step (`StepPlan.global_count`).
        world_size: number of data-parallel ranks.

    Returns:
        Scalar loss to call backward() on.
    """
    if global_count <= 0:
        raise ValueError(f"global_count must be positive, got {global_count}")
    return per_example.sum() * (world_size / global_count)
