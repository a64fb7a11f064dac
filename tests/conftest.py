"""Session fixtures shared by every test layer: tiny local models (no hub), one engine cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# No hub is reachable from test machines: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded tiny Llama policy and reward model, each saved with the byte-level tokenizer."""
    from evolve_ray.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded tiny Llama-3-style policy and reward model (pad == EOS == <|eot_id|>, bfloat16 on disk)."""
    from evolve_ray.models.tiny import build_tiny_chat

    return build_tiny_chat(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def tokenizer(tiny_models: dict[str, Path]):
    from evolve_ray.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_models["policy"]))


@pytest.fixture
def one_rank_gloo() -> Iterator[None]:
    """A one-rank gloo default process group on loopback (no hostname lookup, no file locks).

    In a full run, an in-process vLLM engine (tests/ray/test_vllm_engine.py) has already made the
    process's default group, a one-rank gloo one; it is used as it is and left as found, since a
    second default group cannot coexist with it.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        assert dist.get_world_size() == 1 and dist.get_backend() == "gloo", "an unexpected default group"
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOO_SOCKET_IFNAME", "lo")
        store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
