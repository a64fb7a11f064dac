"""Scaling a running run: `evolve-ray scale RUN --generators N --scorers M`.

The driver starts a small named actor, `control`, in the run's own Ray namespace
(`evolve_ray.<run directory name>`), and records in RUN/control.json the cluster's address, that
namespace and how the driver authenticates to the cluster (Ray's token authentication: where the
token is, never the token itself). `scale` finds the actor through them (or through --address and
the run's name, from a machine that does not hold the run directory, e.g. for a run submitted with
`ray job submit`) and sets the wanted counts; the driver reads them at every work hand-out tick of
the collect stage and at every stage boundary, and adds or retires actors (fleet.py).

The actor judges a request against the cluster before taking it (`judge`): on the run's own local
cluster a count whose reservations exceed the cluster's logical CPUs or GPUs is refused (no node
can join it); on an existing cluster a scale-up with no room says whether an autoscaler may bring
a node or nothing will come, and the driver gives up a slot not placed within
`cluster.placement_timeout_s`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evolve_ray.config import Config
from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write

log = logging.getLogger(__name__)
CONTROL_FILE = "control.json"
ACTOR = "control"
ROLES = ("generator", "scorer")
RESOURCES = ("CPU", "GPU")
CONNECT_RETRIES_S = "5"  # a live cluster answers at once; Ray's default retries a refused connect for 20 s
REACHABLE_TIMEOUT_S = 5.0  # check_reachable: how long a TCP connect to the GCS may take


def run_namespace(run_name: str) -> str:
    """The Ray namespace of the run named `run_name` (its directory's name)."""
    return "evolve_ray." + re.sub(r"[^A-Za-z0-9_.-]", "_", run_name)


# ----------------------------------------------------------------------------------------------
# What the run reserves, and whether a scale request can be placed (pure)


@dataclass(frozen=True)
class Capacity:
    """What the run's actors reserve on the cluster, for judging a scale request."""

    each: dict[str, dict[str, float]]  # role -> the CPUs and GPUs one actor reserves (its bundle)
    fixed: dict[str, float]  # the train workers' reservation, which does not scale
    local: bool  # the run started this cluster itself: no node can join it
    timeout_s: float  # cluster.placement_timeout_s: how long the driver waits for a new slot

    @classmethod
    def of(cls, cfg: Config, *, local: bool) -> Capacity:
        """`local`: the run's driver started the cluster (loop.connect says so)."""
        g, s, t = cfg.generation, cfg.scoring, cfg.training
        return cls(
            each={
                "generator": {"CPU": g.cpus_per_generator, "GPU": g.gpus_per_generator},
                "scorer": {"CPU": s.cpus_per_scorer, "GPU": s.gpus_per_scorer},
            },
            fixed={"CPU": t.num_workers * t.cpus_per_worker, "GPU": float(t.num_workers) if t.use_gpu else 0.0},
            local=local,
            timeout_s=cfg.cluster.placement_timeout_s,
        )

    def reserved(self, counts: Mapping[str, int]) -> dict[str, float]:
        """The CPUs and GPUs of the train workers plus `counts` generators and scorers."""
        return {r: self.fixed[r] + sum(counts[role] * self.each[role][r] for role in ROLES) for r in RESOURCES}


def local_cpus(cfg: Config, cores: int) -> tuple[int, float]:
    """Logical CPUs for a local cluster the run starts, and what its roles reserve at the start.

    Logical CPUs are a scheduling budget, not cores: the cluster gets at least the machine's cores,
    and enough for the configured roles plus one more generator and one more scorer (room for
    `evolve-ray scale`), rounded up.
    """
    cap = Capacity.of(cfg, local=True)
    start = {"generator": cfg.generation.num_generators, "scorer": cfg.scoring.num_scorers}
    room = cap.reserved({role: n + 1 for role, n in start.items()})["CPU"]
    return max(cores, math.ceil(room - 1e-9)), cap.reserved(start)["CPU"]


def _counts(counts: Mapping[str, int]) -> str:
    return f"{counts['generator']} generator(s) and {counts['scorer']} scorer(s)"


def judge(
    cap: Capacity,
    old: Mapping[str, int],
    new: Mapping[str, int],
    *,
    cluster: Mapping[str, float],
    free: Mapping[str, float],
    ceiling: Mapping[str, float] | None,
) -> tuple[str | None, str | None]:
    """Whether going from `old` to `new` counts can be placed: (refusal, note), each a line or None.

    Args:
        cluster, free: the cluster's total and free resources (ray.cluster_resources() and
            ray.available_resources(); Ray leaves out a resource it has none of).
        ceiling: the most the cluster's autoscaler can grow it to; None when no autoscaler reports one.
    """
    need = cap.reserved(new)
    note = None
    for r in RESOURCES:
        more = sum(max(0, new[role] - old[role]) * cap.each[role][r] for role in ROLES)
        if more <= 1e-9:
            continue
        unit = f"logical {r}s" if r == "CPU" else f"{r}s"
        with_trainer = f"{_counts(new)} with the train workers would reserve {need[r]:g} {unit}"
        if cap.local:
            if need[r] > cluster.get(r, 0.0) + 1e-9:
                return (
                    f"{with_trainer}, and the run's local cluster has {cluster.get(r, 0.0):g} (no node can join it); "
                    "stop the run and resume it with the counts you want (`evolve-ray run --resume RUN --set "
                    "generation.num_generators=N`): its cluster is then sized for them"
                ), None
            continue
        if more <= free.get(r, 0.0) + 1e-9:
            continue
        wait = (
            f"the new actors wait up to cluster.placement_timeout_s={cap.timeout_s:g} s, then the run goes on "
            "without them (`evolve-ray status RUN` shows it)"
        )
        if ceiling is None:
            note = (
                f"the cluster has {free.get(r, 0.0):g} {unit} free and no autoscaler: nothing will come unless a "
                f"node joins it (`ray start --address`); {wait}"
            )
        elif need[r] > ceiling.get(r, 0.0) + 1e-9:
            return f"{with_trainer}, and the cluster's autoscaler can grow it to {ceiling.get(r, 0.0):g}", None
        else:
            note = f"the cluster has {free.get(r, 0.0):g} {unit} free: its autoscaler is asked for a node; {wait}"
    return None, note


# ----------------------------------------------------------------------------------------------
# The run's side: the control actor and RUN/control.json


def autoscaler_ceiling() -> dict[str, float] | None:
    """The most resources the cluster's autoscaler can grow it to, as the autoscaler reports them
    to Ray's GCS (the figure Ray Train checks a worker group against); None when none reports, as
    on a `ray start` cluster. A private Ray API (ray 2.60 is pinned)."""
    from ray._private.state import state

    ceiling = state.get_max_resources_from_cluster_config()
    return None if ceiling is None else {k: float(v) for k, v in ceiling.items()}


@ray.remote(num_cpus=0)
class RunControl:
    """The wanted number of generators and scorers; set by `scale`, read by the driver."""

    def __init__(self, targets: dict[str, int], capacity: Capacity) -> None:
        self.wanted = dict(targets)
        self.capacity = capacity

    def set_targets(self, targets: dict[str, int]) -> dict[str, Any]:
        """Take the counts asked for unless the cluster cannot place them: {wanted, refused, note}."""
        new = self.wanted | targets
        refused, note = judge(
            self.capacity,
            self.wanted,
            new,
            cluster=ray.cluster_resources(),
            free=ray.available_resources(),
            ceiling=None if self.capacity.local else autoscaler_ceiling(),
        )
        if refused is None:
            self.wanted = new
        return {"wanted": dict(self.wanted), "refused": refused, "note": note}

    def settle(self, role: str, n: int) -> None:
        """The driver gave up a slot it could not place: it aims for the `n` it has."""
        self.wanted[role] = n

    def targets(self) -> dict[str, int]:
        return dict(self.wanted)


def auth_record() -> dict[str, Any]:
    """How this driver authenticates to its cluster, for `scale` to do the same: Ray's mode (a
    local cluster turns token authentication on unless RAY_AUTH_MODE says otherwise, and sets the
    variable), and where the token is: a file, or None for the RAY_AUTH_TOKEN variable."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return {"mode": "disabled"}
    if "RAY_AUTH_TOKEN" in os.environ:
        return {"mode": "token", "token_file": None}
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return {"mode": "token", "token_file": str(Path(path).expanduser().resolve())}


def start_control(run_dir: Path, targets: dict[str, int], capacity: Capacity) -> Any:
    """The run's control actor, and RUN/control.json saying where it is. One clear error if a
    run of the same name already runs on this cluster (the namespace is taken)."""
    namespace = run_namespace(run_dir.name)
    # On the driver's node, like the buffer: losing a worker node must not take the run's control with it.
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    try:
        actor = RunControl.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=ACTOR, namespace=namespace, scheduling_strategy=driver_node
        ).remote(targets, capacity)
    except ValueError as e:
        raise UserError(
            f"a run named {run_dir.name!r} is already running on this cluster (namespace {namespace}); "
            "stop it or use another run directory name"
        ) from e
    record = {"address": ray.get_runtime_context().gcs_address, "namespace": namespace, "auth": auth_record()}
    atomic_write(run_dir / CONTROL_FILE, json.dumps(record, indent=2).encode())
    return actor


# ----------------------------------------------------------------------------------------------
# The `scale` command's side


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


@dataclass(frozen=True)
class Located:
    address: str
    namespace: str
    auth: dict[str, Any] | None  # None: not known (no run directory here)


def locate(run: str, address: str | None) -> Located:
    """Where the run's control actor is: from RUN/control.json when this machine holds the run
    directory (--address overrides its address), else from `address` and the run's name."""
    record_file = Path(run) / CONTROL_FILE
    if record_file.exists():
        record = json.loads(record_file.read_text())
        # A control.json written before the auth record was kept has none: how to authenticate is not known.
        return Located(address or record["address"], record["namespace"], record.get("auth"))
    if address is None:
        raise UserError(f"{record_file} not found: is the run started? (from another machine, give --address)")
    return Located(address, run_namespace(Path(run).name), None)


def use_auth(auth: dict[str, Any] | None, run: str) -> None:
    """Set this process up to authenticate the way the run's driver does, before ray.init.

    Without the run's record (--address from another machine) Ray's own rule for an address given
    by hand applies: RAY_AUTH_MODE as the caller set it (a token found on this machine is not sent
    to an address unless the caller says so)."""
    if auth is None or auth["mode"] != "token":
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "RAY_AUTH_TOKEN" in os.environ:
        return  # the caller's own token
    name = Path(run).name
    if auth["token_file"] is None:
        raise UserError(
            f"run {name!r}'s cluster uses Ray's token authentication and its driver took the token from the "
            "RAY_AUTH_TOKEN variable: set RAY_AUTH_TOKEN here too"
        )
    if not os.access(auth["token_file"], os.R_OK):
        raise UserError(
            f"run {name!r}'s cluster uses Ray's token authentication and its token file {auth['token_file']} "
            "cannot be read here: run `scale` as the run's user, or give the token in RAY_AUTH_TOKEN"
        )
    os.environ["RAY_AUTH_TOKEN_PATH"] = auth["token_file"]


def check_reachable(address: str, run: str) -> None:
    """One clear error, in seconds, for a GCS address nothing listens on (ray.init would retry
    for minutes): a local run's cluster ends with its driver. Other address forms are left to Ray."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=REACHABLE_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(
            f"no Ray cluster answers at {address} ({e.strerror or e}): run {Path(run).name!r} is not running"
        ) from e


@contextmanager
def _fd2_captured() -> Iterator[IO[bytes]]:
    """File descriptor 2 into a temporary file: Ray's C++ client logs each refused connect attempt
    there (one line a second), and the reason (a missing or wrong token) is read from them."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield f
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def connect_to_run(where: Located, run: str) -> None:
    """ray.init into the run's namespace; one line instead of Ray's retries and tracebacks."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", CONNECT_RETRIES_S)
    # Ray reads RAY_AUTH_MODE into its config at import: read it again (as ray.init does when it
    # turns token authentication on for a local cluster), now that use_auth may have set it.
    ray._raylet.Config.initialize("")  # type: ignore[attr-defined]  # a Cython module: no stubs
    with _fd2_captured() as err:
        try:
            ray.init(address=where.address, namespace=where.namespace, logging_level=logging.ERROR, log_to_driver=False)
            return
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            err.seek(0)
            said = err.read().decode(errors="replace")
            failure: Exception = e
    if isinstance(failure, ray.exceptions.AuthenticationError) or "Unauthenticated" in said:
        token = "the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        fix = (
            f"this process has no token, or not its token: give it {token}"
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
            else f"set RAY_AUTH_MODE=token and give this process {token}"
        )
        raise UserError(
            f"the Ray cluster at {where.address} refused the connection: it uses Ray's token authentication; {fix}"
        ) from failure
    raise UserError(f"cannot connect to the Ray cluster at {where.address} (run {Path(run).name!r}): {failure}")


@dataclass(frozen=True)
class Scaled:
    wanted: dict[str, int]  # the counts the driver now aims for
    note: str | None  # why the new actors may wait (an existing cluster without room)


def request_scale(run: str, targets: dict[str, int | None], *, address: str | None = None) -> Scaled:
    """Ask the running driver of `run` for these counts; refused in one line when its cluster cannot
    place them (control.judge)."""
    wanted = check_targets(targets)
    where = locate(run, address)
    if not ray.is_initialized():
        check_reachable(where.address, run)
        use_auth(where.auth, run)
        connect_to_run(where, run)
    try:
        actor = ray.get_actor(ACTOR, namespace=where.namespace)
    except ValueError as e:
        raise UserError(
            f"no run {Path(run).name!r} is running on the cluster at {where.address} (it finished, or never started)"
        ) from e
    reply: dict[str, Any] = ray.get(actor.set_targets.remote(wanted))  # type: ignore[assignment]  # ray.get of one ref
    if reply["refused"] is not None:
        raise UserError(f"cannot scale run {Path(run).name!r}: {reply['refused']}")
    return Scaled(reply["wanted"], reply["note"])
