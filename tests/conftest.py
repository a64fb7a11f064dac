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


# Under pytest-xdist (cluster/check.sh) the modules go to the two workers one at a time, in
# collection order (--no-loadscope-reorder): the longest Ray modules first, so the last ones handed
# out are short and both workers end together. xdist's own order (most tests first) handed these
# out last, the heaviest modules having one or two tests each: in a fresh-clone CI one worker sat
# idle while the other ran test_node_loss. Longest first by setup + calls in that CI (seconds).
LONGEST_FIRST = (
    "tests/ray/test_driver_kill.py",  # ~480: one run killed five times, resumed each time
    "tests/ray/test_reproduce.py",  # ~300
    "tests/ray/test_run.py",  # ~260
    "tests/ray/test_disk_full.py",  # ~155
    "tests/ray/test_faults.py",  # ~150
    "tests/ray/test_resume.py",  # ~135
    "tests/ray/test_exposure.py",  # ~130
    "tests/ray/test_trainer.py",  # ~120
    "tests/ray/test_scale.py",  # ~110
    "tests/ray/test_job_submit.py",  # ~110
    "tests/ray/test_node_loss.py",  # ~95
    "tests/ray/test_console.py",  # ~85
    "tests/ray/test_soak.py",  # ~70
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, the LONGEST_FIRST modules first; the rest keep their order."""
    if not hasattr(config, "workerinput"):
        return  # one process: the usual order
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded tiny Llama policy and reward model, each saved with the byte-level tokenizer."""
    from evolve_ray.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


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
