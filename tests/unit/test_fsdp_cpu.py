"""The FSDP2 path (sharding, frozen log-probs, steps, the gathered state dict) on the CPU over a
one-rank gloo group, so CI runs the code a GPU cluster uses; bf16 and NCCL are the GPU test's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from tests.fsdp_case import fsdp_steps_lower_the_loss


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """Loopback store and interface: no hostname lookup, no file locks (as in test_losses)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GLOO_SOCKET_IFNAME", "lo")
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    mp.undo()


@pytest.mark.parametrize("reference", ["refresh", "fixed"])
def test_fsdp_fp32_steps_lower_the_loss_on_cpu(process_group, tiny_models, reference: str) -> None:
    fsdp_steps_lower_the_loss(str(tiny_models["policy"]), torch.device("cpu"), reference, bf16=False)
