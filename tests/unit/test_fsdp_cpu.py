"""The FSDP2 path (sharding, frozen log-probs, steps, the gathered state dict) on the CPU over a
one-rank gloo group, so CI runs the code a GPU cluster uses; bf16 and NCCL are the GPU test's."""

from __future__ import annotations

import pytest
import torch

from tests.fsdp_case import fsdp_steps_lower_the_loss


@pytest.mark.parametrize("reference", ["refresh", "fixed"])
def test_fsdp_fp32_steps_lower_the_loss_on_cpu(one_rank_gloo, tiny_models, reference: str) -> None:
    fsdp_steps_lower_the_loss(str(tiny_models["policy"]), torch.device("cpu"), reference, bf16=False)
