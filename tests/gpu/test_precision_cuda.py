"""The precision test of tests/unit/test_precision.py on CUDA: one AdamW step at lr 5e-7 with
bf16 compute on a bf16-stored policy moves (nearly) every master weight, which stay float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fsdp_case import SMALL_LR, small_lr_step_changed_fraction


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_small_lr_step_moves_nearly_every_weight_on_cuda(
    cuda_process_group, bf16_policy: Path, strategy: str
) -> None:
    """DDP under CUDA autocast, FSDP2 with its MixedPrecisionPolicy; in bf16 masters well under
    1% of the weights would move (1.0% and 0.9% on the CPU)."""
    fraction = small_lr_step_changed_fraction(str(bf16_policy), torch.device("cuda", 0), strategy)
    assert fraction >= 0.9, f"one step at lr {SMALL_LR} changed only {fraction:.1%} of the weights"
