"""More GPUs asked than the cluster has: refused right after connecting, in one line, before any
actor starts (the run would otherwise wait forever for resources that never come)."""

from __future__ import annotations

from pathlib import Path

from .cli_process import Driver


def test_cli_refuses_more_gpus_than_the_cluster_has(tiny_models, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [
        f"model.policy={tiny_models['policy']}",
        f"model.reward={tiny_models['reward']}",
        "generation.gpus_per_generator=1",
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
