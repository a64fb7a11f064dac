"""More GPUs asked than the cluster has: refused right after connecting, in one line, before any
actor starts (the run would otherwise wait forever for resources that never come). Resources the
cluster has in total but cannot place for an actor: one clear error once the placement wait ends,
with nothing left reserved."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from evolve_ray.driver import loop
from evolve_ray.errors import UserError

from .cli_process import Driver
from .test_run import tiny_cfg


def test_cli_refuses_more_gpus_than_the_cluster_has(tiny_models, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [
        f"model.policy={tiny_models['policy']}",
        f"model.reward={tiny_models['reward']}",
        "generation.gpus_per_generator=1",
        "scoring.backend=vllm",
        "scoring.gpus_per_scorer=0.5",
        "cluster.num_cpus=2",
        "cluster.include_dashboard=false",
    ]
    d = Driver(["run", "--out", str(run), *[a for s in sets for a in ("--set", s)]], tmp_path / "driver.log")
    try:
        rc = d.wait(timeout=600)
    finally:
        d.cleanup()
    out = d.output()
    errors = [line for line in out.splitlines() if line.startswith("evolve-ray: error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "asks for 1.5 GPUs" in errors[0] and "the cluster has 0" in errors[0]
    assert "started a local Ray cluster" in out  # checked against the real cluster...
    for actor in ("GeneratorActor", "ScorerActor", "BufferActor", "RayTrainWorker"):  # ...before any actor
        assert actor not in out
    assert not (run / "rounds").exists() and not (run / "ray_train").exists()


def test_a_generator_the_cluster_cannot_place_is_one_clear_error(ray_cluster, tiny_models, tmp_path) -> None:
    """The roles add up against the cluster's total, but another job holds the CPUs: the
    generator's reservation waits placement_timeout_s, then one line, nothing left reserved."""
    free = ray.available_resources()["CPU"]
    other_job = ray.util.placement_group([{"CPU": free - 0.25}])  # leaves less than a generator's 0.5
    ray.get(other_job.ready(), timeout=60)
    try:
        cfg = tiny_cfg(tmp_path / "run", tiny_models, "cluster.placement_timeout_s=3")
        with pytest.raises(UserError, match=r"could not place generator-0 \{'CPU': 0\.5\} within cluster\.placement_t"):
            loop.run(cfg)
    finally:
        ray.util.remove_placement_group(other_job)
    stuck = [g for g in ray.util.placement_group_table().values() if g["bundles"] == {0: {"CPU": 0.5}}]
    assert stuck and all(g["state"] == "REMOVED" for g in stuck)  # the reservation was given back


def test_roles_that_ask_for_more_cpus_than_the_cluster_has_are_refused_before_any_actor(
    ray_cluster, tiny_models, tmp_path
) -> None:
    cfg = tiny_cfg(tmp_path / "run", tiny_models, "generation.cpus_per_generator=64")
    with pytest.raises(UserError, match=r"CPU.*generation.num_generators x cpus_per_generator = 1 x 64"):
        loop.run(cfg)
    assert not (tmp_path / "run" / "rounds").exists()
