"""Scaling a running run: `evolve-ray scale RUN --generators N --scorers M`.

The driver starts a small named actor, `control`, in the run's own Ray namespace
(`evolve_ray.<run directory name>`), and records the cluster's address and that namespace in
RUN/control.json. `scale` finds the actor through them (or through --address and the run's name,
from a machine that does not hold the run directory, e.g. for a run submitted with `ray job
submit`) and sets the wanted counts; the driver reads them at every work hand-out tick of the
collect stage and at every stage boundary, and adds or retires actors (fleet.py).
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write

log = logging.getLogger(__name__)
CONTROL_FILE = "control.json"
ACTOR = "control"
ROLES = ("generator", "scorer")


def run_namespace(run_name: str) -> str:
    """The Ray namespace of the run named `run_name` (its directory's name)."""
    return "evolve_ray." + re.sub(r"[^A-Za-z0-9_.-]", "_", run_name)


@ray.remote(num_cpus=0)
class RunControl:
    """The wanted number of generators and scorers; set by `scale`, read by the driver."""

    def __init__(self, targets: dict[str, int]) -> None:
        self.wanted = dict(targets)

    def set_targets(self, targets: dict[str, int]) -> dict[str, int]:
        self.wanted |= targets
        return dict(self.wanted)

    def targets(self) -> dict[str, int]:
        return dict(self.wanted)


def start_control(run_dir: Path, targets: dict[str, int]) -> Any:
    """The run's control actor, and RUN/control.json saying where it is. One clear error if a
    run of the same name already runs on this cluster (the namespace is taken)."""
    namespace = run_namespace(run_dir.name)
    # On the driver's node, like the buffer: losing a worker node must not take the run's control with it.
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    try:
        actor = RunControl.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=ACTOR, namespace=namespace, scheduling_strategy=driver_node
        ).remote(targets)
    except ValueError as e:
        raise UserError(
            f"a run named {run_dir.name!r} is already running on this cluster (namespace {namespace}); "
            "stop it or use another run directory name"
        ) from e
    record = {"address": ray.get_runtime_context().gcs_address, "namespace": namespace}
    atomic_write(run_dir / CONTROL_FILE, json.dumps(record, indent=2).encode())
    return actor


def check_targets(targets: dict[str, int | None]) -> dict[str, int]:
    """The counts asked for, each at least 1; one clear error otherwise."""
    wanted = {role: n for role, n in targets.items() if n is not None}
    if not wanted:
        raise UserError("nothing to scale: give --generators N and/or --scorers M")
    for role, n in wanted.items():
        if role not in ROLES:
            raise UserError(f"cannot scale {role!r}; only {', '.join(ROLES)}")
        if n < 1:
            raise UserError(f"--{role}s must be at least 1, got {n}")
    return wanted


def locate(run: str, address: str | None) -> tuple[str, str]:
    """(cluster address, namespace) of the run: from RUN/control.json when this machine holds
    the run directory, else from `address` and the run's name."""
    record_file = Path(run) / CONTROL_FILE
    if record_file.exists():
        record = json.loads(record_file.read_text())
        return address or record["address"], record["namespace"]
    if address is None:
        raise UserError(f"{record_file} not found: is the run started? (from another machine, give --address)")
    return address, run_namespace(Path(run).name)


def check_reachable(address: str, run: str, timeout_s: float = 5.0) -> None:
    """One clear error, in seconds, for a GCS address nothing listens on (ray.init would retry
    for minutes): a local run's cluster ends with its driver. Other address forms are left to Ray."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(
            f"no Ray cluster answers at {address} ({e.strerror or e}): run {Path(run).name!r} is not running"
        ) from e


def request_scale(run: str, targets: dict[str, int | None], *, address: str | None = None) -> dict[str, int]:
    """Ask the running driver of `run` for these counts; returns the counts it now aims for."""
    wanted = check_targets(targets)
    addr, namespace = locate(run, address)
    if not ray.is_initialized():
        check_reachable(addr, run)
        ray.init(address=addr, namespace=namespace, logging_level=logging.ERROR, log_to_driver=False)
    try:
        actor = ray.get_actor(ACTOR, namespace=namespace)
    except ValueError as e:
        raise UserError(
            f"no run {Path(run).name!r} is running on the cluster at {addr} (it finished, or never started)"
        ) from e
    now: dict[str, int] = ray.get(actor.set_targets.remote(wanted))  # type: ignore[assignment]  # ray.get of one ref
    return now
