"""FSDP2 + bf16 (+ activation checkpointing) training on a GPU with the same step code the Ray
workers run (the CPU twin, over gloo in fp32, is tests/unit/test_fsdp_cpu.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from tests.fsdp_case import fsdp_steps_lower_the_loss


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A one-rank NCCL group: FSDP2 needs a device mesh even on a single GPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("reference", ["refresh", "fixed"])
def test_fsdp_bf16_steps_lower_the_loss(process_group, tiny_models, reference: str) -> None:
    fsdp_steps_lower_the_loss(str(tiny_models["policy"]), torch.device("cuda", 0), reference, use_gpu=True, bf16=True)
