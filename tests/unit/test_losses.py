"""Losses against hand-computed values, their invariants, the registry, and the data-parallel reduction."""

from __future__ import annotations

import typing

import pytest
import torch

from evolve_ray.config import TrainingConfig
from evolve_ray.core.losses import (
    LOSSES,
    PairLogps,
    dp_scaled_loss,
    dpo_loss,
    evolve_loss,
    inpo_loss,
    ipo_loss,
    sft_loss,
)


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def _pair(margins: list[float]) -> PairLogps:
    """Policy margin m on the chosen side only; rejected and reference log-probs zero."""
    z = torch.zeros(len(margins))
    return PairLogps(torch.tensor(margins, dtype=torch.float32), z, z, z)


def _direct(pair: PairLogps) -> dict[str, PairLogps]:
    return {"direct": pair}


def test_dpo_hand_values() -> None:
    """beta 0.1, m = [0, 10, 20]: -log sigmoid([0, 1, 2]) = [0.693147, 0.313262, 0.126928]."""
    loss, _ = dpo_loss(_direct(_pair([0.0, 10.0, 20.0])), beta=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=1e-6)


def test_dpo_label_smoothing_hand_values() -> None:
    """-(1-ls) log s(z) - ls log s(-z) = -log s(z) + ls*z; ls 0.1, z = [0, 1, 2]:
    [0.693147, 0.313262 + 0.1, 0.126928 + 0.2] = [0.693147, 0.413262, 0.326928]."""
    loss, _ = dpo_loss(_direct(_pair([0.0, 10.0, 20.0])), beta=0.1, label_smoothing=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.413262, 0.326928], abs=1e-6)


def test_dpo_uses_reference_log_ratio() -> None:
    """pi_c=-1, pi_r=-3, ref_c=-2, ref_r=-2: m = 1 - (-1) = 2; beta 0.5 -> -log s(1) = 0.313262."""
    loss, _ = dpo_loss(_direct(PairLogps(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))), beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)


def test_dpo_swap_chosen_rejected() -> None:
    """Swapping negates z: loss(-z) - loss(z) = z, and the metrics mirror."""
    p = PairLogps(_t(-1.0, -2.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0))
    swapped = PairLogps(p.pi_rejected, p.pi_chosen, p.ref_rejected, p.ref_chosen)
    loss, m = dpo_loss(_direct(p), beta=0.5)
    loss_s, m_s = dpo_loss(_direct(swapped), beta=0.5)
    torch.testing.assert_close(loss_s - loss, 0.5 * p.margin())
    assert m_s["margin"] == pytest.approx(-m["margin"])
    assert m_s["chosen_reward"] == pytest.approx(m["rejected_reward"])


def test_reward_metrics_hand_values() -> None:
    """beta 0.5: chosen rewards [0.5, 0], rejected [-0.5, 0.5], margins [1, -0.5]:
    means 0.25, 0.0, 0.25; accuracy 1/2."""
    _, m = dpo_loss(_direct(PairLogps(_t(-1.0, -2.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0))), beta=0.5)
    assert m == pytest.approx({"chosen_reward": 0.25, "rejected_reward": 0.0, "margin": 0.25, "reward_acc": 0.5})
    assert all(isinstance(v, float) for v in m.values())


def test_ipo_hand_values_and_swap() -> None:
    """beta 0.1, m = [0, 5, 10, 20]: (0.1 m - 0.5)^2 = [0.25, 0, 0.25, 2.25]; swapped m=5 -> (-1)^2 = 1."""
    p = _pair([0.0, 5.0, 10.0, 20.0])
    loss, _ = ipo_loss(_direct(p), beta=0.1)
    assert loss.tolist() == pytest.approx([0.25, 0.0, 0.25, 2.25], abs=1e-6)
    swapped, _ = ipo_loss(_direct(PairLogps(p.pi_rejected, p.pi_chosen, p.ref_rejected, p.ref_chosen)), beta=0.1)
    assert swapped[1].item() == pytest.approx(1.0)


def test_evolve_hand_values() -> None:
    """beta 0.1, alpha 2, gamma 0.5, DPO direct.
    Example 0: direct m=10 -> 0.313262; refine m=0 -> 2*0.25; keep m=10 -> 0.5*0.25: 0.938262.
    Example 1: direct m=0 -> 0.693147; refine m=5 -> 0; keep m=5 -> 0: 0.693147."""
    loss, m = evolve_loss(
        {"direct": _pair([10.0, 0.0]), "refine": _pair([0.0, 5.0]), "keep": _pair([10.0, 5.0])},
        beta=0.1,
        alpha=2.0,
        gamma=0.5,
        direct_loss="dpo",
    )
    assert loss.tolist() == pytest.approx([0.938262, 0.693147], abs=1e-6)
    assert m["refine_margin"] == pytest.approx(0.25) and m["refine_acc"] == pytest.approx(0.5)
    assert m["margin"] == pytest.approx(0.5) and m["keep_margin"] == pytest.approx(0.75)


def test_evolve_ipo_direct_and_no_keep() -> None:
    """IPO direct: beta 0.1, direct m=[5, 0] -> [0, 0.25]; alpha 1, refine m=[15, 5] -> [1, 0]: [1, 0.25]."""
    loss, m = evolve_loss(
        {"direct": _pair([5.0, 0.0]), "refine": _pair([15.0, 5.0])}, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="ipo"
    )
    assert loss.tolist() == pytest.approx([1.0, 0.25], abs=1e-6)
    assert "keep_loss" not in m


def test_evolve_refine_term_optimum_at_half() -> None:
    """d/d pi_c of alpha (beta m - 1/2)^2 = 2 alpha beta (beta m - 1/2): zero at beta m = 1/2 (m=5 for
    beta 0.1), 0.1 at m=10 with alpha 1; unlike DPO, pushing the margin past 5 raises the loss."""
    pi_c = torch.tensor([4.0, 5.0, 6.0, 10.0], requires_grad=True)
    z = torch.zeros(4)
    refine = PairLogps(pi_c, z, z, z)
    direct = PairLogps(z, z, z, z)  # constant direct term: its gradient w.r.t. pi_c is absent
    loss, _ = evolve_loss({"direct": direct, "refine": refine}, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="dpo")
    loss.sum().backward()
    assert pi_c.grad is not None
    assert pi_c.grad.tolist() == pytest.approx([-0.02, 0.0, 0.02, 0.1], abs=1e-6)
    assert loss[1] < loss[0] and loss[1] < loss[2] < loss[3]


def test_evolve_needs_keep_when_gamma_positive() -> None:
    with pytest.raises(ValueError, match="keep"):
        evolve_loss({"direct": _pair([1.0]), "refine": _pair([1.0])}, beta=0.1, alpha=1.0, gamma=0.5, direct_loss="dpo")
    with pytest.raises(ValueError, match="direct_loss"):
        evolve_loss({"direct": _pair([1.0]), "refine": _pair([1.0])}, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="kto")  # type: ignore[arg-type]


def test_inpo_hand_values() -> None:
    """eta 0.5, tau 0.25: h = (1 - 0) - 0.5 (0.5 - 0) - 0.5 (0 - 1) = 1.25; (1.25 - 1)^2 = 0.0625.
    All zeros: h = 0, (0 - 1)^2 = 1."""
    pair = PairLogps(_t(1.0, 0.0), _t(0.0, 0.0), _t(0.5, 0.0), _t(0.0, 0.0), _t(0.0, 0.0), _t(1.0, 0.0))
    loss, m = inpo_loss(_direct(pair), eta=0.5, tau=0.25)
    assert loss.tolist() == pytest.approx([0.0625, 1.0])
    assert m["inpo_h"] == pytest.approx(0.625)


def test_inpo_equals_ipo_when_eta_equals_tau() -> None:
    """eta == tau drops pi_t: h = m, (m - 1/(2 eta))^2 = (eta m - 1/2)^2 / eta^2."""
    gen = torch.Generator().manual_seed(1)
    pair = PairLogps(*(torch.randn(6, generator=gen) * 50 for _ in range(4)))
    prev_c, prev_r = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    eta = 0.005
    with_prev = PairLogps(pair.pi_chosen, pair.pi_rejected, pair.ref_chosen, pair.ref_rejected, prev_c, prev_r)
    inpo, _ = inpo_loss(_direct(with_prev), eta=eta, tau=eta)
    ipo, _ = ipo_loss(_direct(pair), beta=eta)
    torch.testing.assert_close(inpo, ipo / eta**2, rtol=1e-4, atol=1e-4)


def test_inpo_swap_changes_sign_of_h() -> None:
    pair = PairLogps(_t(2.0), _t(1.0), _t(0.5), _t(0.0), _t(0.3), _t(0.1))
    swapped = PairLogps(pair.pi_rejected, pair.pi_chosen, pair.ref_rejected, pair.ref_chosen, _t(0.1), _t(0.3))
    _, m = inpo_loss(_direct(pair), eta=0.5, tau=0.2)
    _, m_s = inpo_loss(_direct(swapped), eta=0.5, tau=0.2)
    assert m_s["inpo_h"] == pytest.approx(-m["inpo_h"]) and m["inpo_h"] != 0


def test_sft_hand_values() -> None:
    """w_d 1, w_r 0.5: -( [-2, -4] + 0.5 [-1, -3] ) = [2.5, 5.5]; mean NLLs 3 and 2."""
    chosen_only = {"direct": PairLogps(_t(-2.0, -4.0), _t(0.0, 0.0)), "refine": PairLogps(_t(-1.0, -3.0), _t(0.0, 0.0))}
    loss, m = sft_loss(chosen_only, direct_weight=1.0, refine_weight=0.5)
    assert loss.tolist() == pytest.approx([2.5, 5.5])
    assert m == pytest.approx({"nll_direct": 3.0, "nll_refine": 2.0})


HYPER = {
    "beta": 0.1,
    "alpha": 2.0,
    "gamma": 0.5,
    "direct_loss": "dpo",
    "label_smoothing": 0.0,
    "eta": 0.5,
    "tau": 0.25,
    "direct_weight": 1.0,
    "refine_weight": 0.5,
}


def test_the_registry_names_every_schema_loss() -> None:
    loss_field = typing.get_type_hints(TrainingConfig)["loss"]
    assert set(LOSSES) == set(typing.get_args(loss_field))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_takes_one_call(name: str) -> None:
    """The same pairs (every kind, reference and round-start log-probs) and every hyper-parameter:
    each loss reads what it needs and gives what its own function gives from its own arguments."""
    gen = torch.Generator().manual_seed(3)
    pairs = {
        kind: PairLogps(*(torch.randn(5, generator=gen) for _ in range(6))) for kind in ("direct", "refine", "keep")
    }
    loss, metrics = LOSSES[name](pairs, **HYPER)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    own = {
        "dpo": lambda: dpo_loss(pairs, beta=0.1),
        "ipo": lambda: ipo_loss(pairs, beta=0.1),
        "evolve": lambda: evolve_loss(pairs, beta=0.1, alpha=2.0, gamma=0.5, direct_loss="dpo"),
        "inpo": lambda: inpo_loss(pairs, eta=0.5, tau=0.25),
        "sft": lambda: sft_loss(pairs, direct_weight=1.0, refine_weight=0.5),
    }[name]()
    assert torch.equal(loss, own[0]) and metrics == own[1]


@pytest.mark.parametrize("name", ["dpo", "ipo", "evolve", "inpo"])
def test_a_preference_loss_without_reference_log_probs_is_refused(name: str) -> None:
    policy_only = {kind: PairLogps(_t(1.0), _t(0.0)) for kind in ("direct", "refine")}
    with pytest.raises(ValueError, match="reference"):
        LOSSES[name](policy_only, **HYPER | {"gamma": 0.0})


def test_inpo_without_round_start_log_probs_is_refused() -> None:
    with pytest.raises(ValueError, match="round-start"):
        inpo_loss(_direct(PairLogps(_t(1.0), _t(0.0), _t(0.0), _t(0.0))), eta=0.5, tau=0.25)


def test_compute_loss_reads_each_kind_from_its_column() -> None:
    """test_evolve_hand_values' pairs laid out as the trainer holds them, [B, K, 2] with K in
    `terms` order (here keep first): the same per-example loss, 0.938262 and 0.693147."""
    from evolve_ray.train.step import compute_loss

    margins = {"direct": [10.0, 0.0], "refine": [0.0, 5.0], "keep": [10.0, 5.0]}
    terms = ("keep", "direct", "refine")
    pi = torch.zeros(2, 3, 2)
    for k, term in enumerate(terms):
        pi[:, k, 0] = _t(*margins[term])
    cfg = TrainingConfig(loss="evolve", beta=0.1, alpha=2.0, gamma=0.5, direct_loss="dpo")
    loss, _ = compute_loss(cfg, terms, pi, ref=torch.zeros(2, 3, 2))
    assert loss.tolist() == pytest.approx([0.938262, 0.693147], abs=1e-6)


def _shards_loss_and_grad(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rank dp_scaled_loss averaged over ranks (what DDP does to gradients) vs the full mean."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(sum(sizes), generator=gen)
    w = torch.tensor(0.7, requires_grad=True)
    full = ((w * x - 1.0) ** 2).mean()
    (full_grad,) = torch.autograd.grad(full, w)
    n = sum(sizes)
    avg_loss, avg_grad = torch.zeros(()), torch.zeros(())
    for shard in torch.split(x, sizes):
        local = dp_scaled_loss((w * shard - 1.0) ** 2, global_count=n, world_size=len(sizes))
        (g,) = torch.autograd.grad(local, w)
        avg_loss, avg_grad = avg_loss + local.detach() / len(sizes), avg_grad + g / len(sizes)
    return full.detach(), torch.stack([avg_loss, avg_grad]), full_grad


@pytest.mark.parametrize("sizes", [[3, 1, 5], [4, 4], [1, 0, 6, 2]])
def test_dp_reduction_equals_full_batch_mean(sizes: list[int]) -> None:
    full, (avg_loss, avg_grad), full_grad = _shards_loss_and_grad(sizes)
    torch.testing.assert_close(avg_loss, full)
    torch.testing.assert_close(avg_grad, full_grad)


def test_per_rank_mean_is_wrong_for_uneven_shards() -> None:
    """The bug the reduction exists for: averaging per-rank means over-weights small shards."""
    x = _t(1.0, 2.0, 3.0, 10.0)
    naive = (x[:3].mean() + x[3:].mean()) / 2
    exact = sum(dp_scaled_loss(s, global_count=4, world_size=2) for s in (x[:3], x[3:])) / 2
    assert exact.item() == pytest.approx(x.mean().item()) and naive.item() != pytest.approx(x.mean().item())


def test_dp_scaled_loss_accepts_a_scalar_sum_and_rejects_zero_count() -> None:
    assert dp_scaled_loss(torch.tensor(6.0), global_count=3, world_size=2).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="global_count"):
        dp_scaled_loss(torch.tensor(1.0), global_count=0, world_size=1)
