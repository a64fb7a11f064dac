"""Losses against hand-computed values, their invariants, and the data-parallel reduction."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from evolve_ray.core.losses import (
    PairLogps,
    dp_scaled_loss,
    dpo_loss,
    evolve_loss,
    global_count,
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


def _fields(p: PairLogps) -> tuple[torch.Tensor, ...]:
    return p.pi_chosen, p.pi_rejected, p.ref_chosen, p.ref_rejected


def test_dpo_hand_values() -> None:
    """beta 0.1, m = [0, 10, 20]: -log sigmoid([0, 1, 2]) = [0.693147, 0.313262, 0.126928]."""
    loss, _ = dpo_loss(*_fields(_pair([0.0, 10.0, 20.0])), beta=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.313262, 0.126928], abs=1e-6)


def test_dpo_label_smoothing_hand_values() -> None:
    """-(1-ls) log s(z) - ls log s(-z) = -log s(z) + ls*z; ls 0.1, z = [0, 1, 2]:
    [0.693147, 0.313262 + 0.1, 0.126928 + 0.2] = [0.693147, 0.413262, 0.326928]."""
    loss, _ = dpo_loss(*_fields(_pair([0.0, 10.0, 20.0])), beta=0.1, label_smoothing=0.1)
    assert loss.tolist() == pytest.approx([0.693147, 0.413262, 0.326928], abs=1e-6)


def test_dpo_uses_reference_log_ratio() -> None:
    """pi_c=-1, pi_r=-3, ref_c=-2, ref_r=-2: m = 1 - (-1) = 2; beta 0.5 -> -log s(1) = 0.313262."""
    loss, _ = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)


def test_dpo_swap_chosen_rejected() -> None:
    """Swapping negates z: loss(-z) - loss(z) = z, and the metrics mirror."""
    p = PairLogps(_t(-1.0, -2.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0))
    swapped = PairLogps(p.pi_rejected, p.pi_chosen, p.ref_rejected, p.ref_chosen)
    loss, m = dpo_loss(*_fields(p), beta=0.5)
    loss_s, m_s = dpo_loss(*_fields(swapped), beta=0.5)
    torch.testing.assert_close(loss_s - loss, 0.5 * p.margin())
    assert m_s["margin"] == pytest.approx(-m["margin"])
    assert m_s["chosen_reward"] == pytest.approx(m["rejected_reward"])


def test_reward_metrics_hand_values() -> None:
    """beta 0.5: chosen rewards [0.5, 0], rejected [-0.5, 0.5], margins [1, -0.5]:
    means 0.25, 0.0, 0.25; accuracy 1/2."""
    _, m = dpo_loss(_t(-1.0, -2.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.0, -2.0), beta=0.5)
    assert m == pytest.approx({"chosen_reward": 0.25, "rejected_reward": 0.0, "margin": 0.25, "reward_acc": 0.5})
    assert all(isinstance(v, float) for v in m.values())


def test_ipo_hand_values_and_swap() -> None:
    """beta 0.1, m = [0, 5, 10, 20]: (0.1 m - 0.5)^2 = [0.25, 0, 0.25, 2.25]; swapped m=5 -> (-1)^2 = 1."""
    p = _pair([0.0, 5.0, 10.0, 20.0])
    loss, _ = ipo_loss(*_fields(p), beta=0.1)
    assert loss.tolist() == pytest.approx([0.25, 0.0, 0.25, 2.25], abs=1e-6)
    swapped, _ = ipo_loss(p.pi_rejected, p.pi_chosen, p.ref_rejected, p.ref_chosen, beta=0.1)
    assert swapped[1].item() == pytest.approx(1.0)


def test_evolve_hand_values() -> None:
    """beta 0.1, alpha 2, gamma 0.5, DPO direct.
    Example 0: direct m=10 -> 0.313262; refine m=0 -> 2*0.25; keep m=10 -> 0.5*0.25: 0.938262.
    Example 1: direct m=0 -> 0.693147; refine m=5 -> 0; keep m=5 -> 0: 0.693147."""
    loss, m = evolve_loss(
        _pair([10.0, 0.0]),
        _pair([0.0, 5.0]),
        _pair([10.0, 5.0]),
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
        _pair([5.0, 0.0]), _pair([15.0, 5.0]), None, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="ipo"
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
    loss, _ = evolve_loss(direct, refine, None, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="dpo")
    loss.sum().backward()
    assert pi_c.grad is not None
    assert pi_c.grad.tolist() == pytest.approx([-0.02, 0.0, 0.02, 0.1], abs=1e-6)
    assert loss[1] < loss[0] and loss[1] < loss[2] < loss[3]


def test_evolve_needs_keep_when_gamma_positive() -> None:
    with pytest.raises(ValueError, match="keep"):
        evolve_loss(_pair([1.0]), _pair([1.0]), None, beta=0.1, alpha=1.0, gamma=0.5, direct_loss="dpo")
    with pytest.raises(ValueError, match="direct_loss"):
        evolve_loss(_pair([1.0]), _pair([1.0]), None, beta=0.1, alpha=1.0, gamma=0.0, direct_loss="kto")  # type: ignore[arg-type]


def test_inpo_hand_values() -> None:
    """eta 0.5, tau 0.25: h = (1 - 0) - 0.5 (0.5 - 0) - 0.5 (0 - 1) = 1.25; (1.25 - 1)^2 = 0.0625.
    All zeros: h = 0, (0 - 1)^2 = 1."""
    pair = PairLogps(_t(1.0, 0.0), _t(0.0, 0.0), _t(0.5, 0.0), _t(0.0, 0.0))
    loss, m = inpo_loss(pair, _t(0.0, 0.0), _t(1.0, 0.0), eta=0.5, tau=0.25)
    assert loss.tolist() == pytest.approx([0.0625, 1.0])
    assert m["inpo_h"] == pytest.approx(0.625)


def test_inpo_equals_ipo_when_eta_equals_tau() -> None:
    """eta == tau drops pi_t: h = m, (m - 1/(2 eta))^2 = (eta m - 1/2)^2 / eta^2."""
    gen = torch.Generator().manual_seed(1)
    pair = PairLogps(*(torch.randn(6, generator=gen) * 50 for _ in range(4)))
    prev_c, prev_r = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    eta = 0.005
    inpo, _ = inpo_loss(pair, prev_c, prev_r, eta=eta, tau=eta)
    ipo, _ = ipo_loss(*_fields(pair), beta=eta)
    torch.testing.assert_close(inpo, ipo / eta**2, rtol=1e-4, atol=1e-4)


def test_inpo_swap_changes_sign_of_h() -> None:
    pair = PairLogps(_t(2.0), _t(1.0), _t(0.5), _t(0.0))
    swapped = PairLogps(pair.pi_rejected, pair.pi_chosen, pair.ref_rejected, pair.ref_chosen)
    _, m = inpo_loss(pair, _t(0.3), _t(0.1), eta=0.5, tau=0.2)
    _, m_s = inpo_loss(swapped, _t(0.1), _t(0.3), eta=0.5, tau=0.2)
    assert m_s["inpo_h"] == pytest.approx(-m["inpo_h"]) and m["inpo_h"] != 0


def test_sft_hand_values() -> None:
    """w_d 1, w_r 0.5: -( [-2, -4] + 0.5 [-1, -3] ) = [2.5, 5.5]; mean NLLs 3 and 2."""
    loss, m = sft_loss(_t(-2.0, -4.0), _t(-1.0, -3.0), direct_weight=1.0, refine_weight=0.5)
    assert loss.tolist() == pytest.approx([2.5, 5.5])
    assert m == pytest.approx({"nll_direct": 3.0, "nll_refine": 2.0})


def _shards_loss_and_grad(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rank dp_scaled_loss averaged over ranks (what DDP does to gradients) vs the full mean."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(sum(sizes), generator=gen)
    w = torch.tensor(0.7, requires_grad=True)
    full = ((w * x - 1.0) ** 2).mean()
    (full_grad,) = torch.autograd.grad(full, w)
    n = global_count(sum(sizes))
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


def test_global_count_with_an_all_reduce(one_rank_gloo) -> None:
    """A fake SUM all-reduce over three ranks, and the real one on a one-rank gloo group."""
    others = [5, 2]

    def fake_all_reduce(t: torch.Tensor) -> None:
        t += sum(others)

    assert global_count(3, fake_all_reduce) == 10
    assert global_count(3) == 3
    assert global_count(7, dist.all_reduce) == 7
