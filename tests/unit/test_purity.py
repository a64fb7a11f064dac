"""The pure layers never import ray or vllm (checked in a fresh interpreter)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import evolve_ray

# The Ray shell: the only modules allowed to import ray (vllm is imported lazily by engines).
SHELL = (
    "evolve_ray.actors",
    "evolve_ray.train.worker",
    "evolve_ray.train.job",
    "evolve_ray.driver.loop",
    "evolve_ray.driver.pipeline",
    "evolve_ray.cli",
    "evolve_ray.driver.evaluation",
    "evolve_ray.driver.fleet",
    "evolve_ray.driver.collect",
    "evolve_ray.driver.session",
    "evolve_ray.driver.control",
    "evolve_ray.experiments.reproduce",
    "evolve_ray.reporting.metrics_export",
    "evolve_ray.bench",
)
PURE = sorted(m.name for m in pkgutil.walk_packages(evolve_ray.__path__, "evolve_ray.") if not m.name.startswith(SHELL))


def test_pure_modules_import_neither_ray_nor_vllm() -> None:
    code = (
        "import importlib, sys\n"
        "def heavy():\n"
        "    return {k.split('.')[0] for k in sys.modules} & {'ray', 'vllm'}\n"
        f"for m in {PURE!r}:\n"
        "    importlib.import_module(m)\n"
        "    if heavy():\n"
        "        print(m, sorted(heavy()))\n"
        "        break\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert "evolve_ray.core.losses" in PURE and "evolve_ray.config" in PURE
    assert out == "", f"the first pure module that pulled in ray/vllm: {out}"


def test_every_shell_entry_names_a_module() -> None:
    names = {m.name for m in pkgutil.walk_packages(evolve_ray.__path__, "evolve_ray.")}
    assert [s for s in SHELL if s not in names] == []


def test_the_check_can_fail() -> None:
    code = "import sys, evolve_ray.actors.buffer; print(any(k == 'ray' for k in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"
