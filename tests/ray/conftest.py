"""One real local Ray cluster for the whole test session, one per pytest-xdist worker (Ray core has
no local mode)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _engine_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One vLLM cache root for the session, set before the cluster starts so every actor inherits
    # it (engines on CPU inspect the model class in process and write little there: docs/platform.md).
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def ray_cluster(_engine_env: None) -> Iterator[None]:
    import ray

    # Logical CPUs are a scheduling budget, not cores: 4 lets generators, a scorer and two
    # train workers co-exist on a 2-core machine (docs/platform.md: they must add up).
    # address="local": a fresh cluster even when another (`ray start`) runs on this machine.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.ray)
