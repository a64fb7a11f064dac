"""GPU tests: collected everywhere, skipped where CUDA is absent. They import torch and the pure
layer only (no ray, no vllm): tests/gpu/run_gpu_checks.sh runs them on a bare torch machine."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def cuda_process_group() -> Iterator[None]:
    """A one-rank default group: NCCL for CUDA tensors (FSDP2 needs a device mesh even on one
    GPU) and gloo for CPU ones (the fp32 CPU runs compared against share the process)."""
    import torch
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback: no hostname lookup
        torch.cuda.set_device(0)
        store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
        dist.init_process_group("cpu:gloo,cuda:nccl", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


@pytest.fixture(scope="session")
def bf16_policy(tmp_path_factory: pytest.TempPathFactory):
    """The tiny policy stored in bfloat16."""
    from tests.fsdp_case import save_bf16_policy

    return save_bf16_policy(tmp_path_factory.mktemp("bf16") / "policy")
