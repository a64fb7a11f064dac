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

    # The session's cluster stands in for an existing cluster that in-process runs join, with 4
    # logical CPUs (a scheduling budget, not cores): room for two generators, a scorer and two
    # train workers on a 2-core machine. A run the CLI starts sizes its own local cluster
    # (control.local_cpus); tests/ray/test_scale.py and test_sigterm.py run it that way.
    # address="local": a fresh cluster even when another (`ray start`) runs on this machine.
    # Token authentication off for this in-process test cluster (tests only; runs keep Ray's
    # default): set in the environment its GCS inherits and re-read into this process's Ray config,
    # so both sides agree whatever an earlier test in this worker left there.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray._raylet.Config.initialize("")  # type: ignore[attr-defined]
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.ray)
