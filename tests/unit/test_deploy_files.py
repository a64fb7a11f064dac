"""Every job config validates against the schema; every cluster file parses and has its shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from evolve_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
STORAGE = "/mnt/cluster-storage"  # shared by every node: the recipes' run directories


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_job_configs_validate(path: Path) -> None:
    load_config(path)


def test_paper_recipe_has_the_paper_round_structure() -> None:
    cfg = load_config(ROOT / "jobs" / "configs" / "llama8b_8gpu.yaml")
    assert cfg.run.rounds == 3 and cfg.generation.turns == 3 and cfg.generation.num_samples == 4
    assert cfg.training.use_gpu and cfg.training.strategy == "fsdp"


def test_cluster_launcher_matches_rays_schema() -> None:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    schema = json.loads((Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text())
    doc = yaml.safe_load((ROOT / "cluster" / "gpu-cluster.yaml").read_text())
    jsonschema.validate(doc, schema)
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any("install.sh" in c for c in doc["setup_commands"])
    assert any(f"{STORAGE}\n" in c or f" {STORAGE})" in c for c in doc["setup_commands"])  # every node mounts it
    gpu_nodes = [t["node_config"]["InstanceType"] for t in doc["available_node_types"].values() if t["min_workers"]]
    assert gpu_nodes == ["p4de.24xlarge"]  # 80 GB A100s: the recipes' cluster.gpu_memory_gib


def test_schema_check_can_fail() -> None:
    spec = importlib.util.find_spec("ray")
    schema = json.loads((Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cluster_name": "x", "provider": {"type": "aws"}, "max_workers": "many"}, schema)


def _pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests(name: str) -> None:
    doc = yaml.safe_load((ROOT / "cluster" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    if doc["kind"] == "RayJob":
        assert "jobs/run_evolve.py" in doc["spec"]["entrypoint"]
        yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        cluster = doc["spec"]["rayClusterSpec"]
    else:
        assert doc["kind"] == "RayCluster"
        cluster = doc["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for pod in _pod_specs(cluster):
        assert pod["containers"] and all(c["image"] for c in pod["containers"])
        # The driver (head) and the trainers (workers) share the run directory.
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == STORAGE]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "evolve-ray-runs"


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("llama*.yaml")), ids=lambda p: p.name)
def test_gpu_recipes_write_their_run_on_the_storage_every_node_mounts(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.out.startswith(STORAGE + "/") and cfg.cluster.gpu_memory_gib == 80


def test_runtime_env_parses() -> None:
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and ".venv" in env["excludes"]


def dashboard_targets() -> list[tuple[str, str]]:
    """(report key, PromQL) of every series the Grafana dashboard plots; the legend names the key."""
    doc = json.loads((ROOT / "cluster" / "grafana_evolve_ray.json").read_text())
    return [(t["legendFormat"].split(" ")[0], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def test_grafana_dashboard_plots_documented_keys_under_their_exported_names() -> None:
    from evolve_ray.reporting.metric_keys import explain
    from evolve_ray.reporting.metrics_export import prometheus_name

    doc = json.loads((ROOT / "cluster" / "grafana_evolve_ray.json").read_text())
    assert doc["uid"] and doc["panels"] and {v["name"] for v in doc["templating"]["list"]} == {"datasource", "run"}
    targets = dashboard_targets()
    assert len(targets) >= 10 and "eval/turn_1_accuracy" in dict(targets)
    for key, expr in targets:
        assert explain(key) is not None, key  # a key the loop exports (the glossary lists them)
        # Ray's metrics agent prefixes application gauges with "ray_" on the Prometheus endpoint.
        assert expr == f'ray_{prometheus_name(key)}{{run=~"$run"}}', expr
