"""The learning-rate schedules within a round: warm-up, then constant, linear or cosine to 0."""

from __future__ import annotations

import pytest
import torch

from evolve_ray.config import TrainingConfig
from evolve_ray.train.step import build_optimizer


def lrs(schedule: str, warmup: int, steps: int) -> list[float]:
    """The learning rate each optimizer step runs at, read from the real AdamW + LambdaLR."""
    cfg = TrainingConfig(lr=1.0, lr_schedule=schedule, warmup_steps=warmup)  # type: ignore[arg-type]
    opt, sched = build_optimizer(torch.nn.Linear(2, 1), cfg, steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        # warm-up 2 of 6 steps: (s+1)/2 -> 0.5, 1; then progress p = (s-2)/4 over the 4 others.
        ("constant", 2, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", 2, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        # cosine: 0.5 * (1 + cos(pi * p)) for p = 0, 1/4, 1/2, 3/4.
        ("cosine", 2, [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
        ("cosine", 0, [1.0, 0.904508, 0.654508, 0.345492, 0.095492]),
    ],
)
def test_schedules_by_hand(schedule: str, warmup: int, expected: list[float]) -> None:
    assert lrs(schedule, warmup, len(expected)) == pytest.approx(expected, abs=1e-6)
