"""The run's actors and what happens when one dies.

A generator or scorer that dies mid-round (killed, or its process exits) is replaced by a new
actor serving the latest policy, and its share of the work is submitted again: the buffer's
journal holds every candidate and score already streamed, so the planner resumes each prompt
where it stopped and nothing is generated or paired twice. One that dies between stages (after
its share of the round is done, during training or the weight push) is found by `heal`, which
the driver calls after training and before evaluating. Restarts are counted for the report.

The fleet's size can change while the run goes (`evolve-ray scale`, through the run's control
actor): `add` starts an actor on the latest policy in a slot of its own, `leave` marks one to go
once its current work is over (a generator after its batch; a scorer at the end of the stage),
and `finish` removes it when its call returns.

Each generator and scorer slot reserves its CPUs and GPUs in a placement group of its own, made
once and kept for the run: a replacement takes the slot's bundle again, and when the bundle's
node dies Ray places the bundle on another node. The run stops with one clear error when the
cluster cannot place a slot's bundle in `cluster.placement_timeout_s`; a slot added by `scale`
that is not placed in that time is given up (`unplaced`) and the run goes on without it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.actors.scorer import ScorerActor
from evolve_ray.config import Config
from evolve_ray.driver.builders import buffer_args
from evolve_ray.driver.retry import Attempts
from evolve_ray.errors import UserError
from evolve_ray.tasks.base import Task

log = logging.getLogger(__name__)
ROLES = ("generator", "scorer")  # the replaceable actors
T = TypeVar("T")


@dataclass
class Launch:
    """Work handed to one role's actors: which call is pending for which actor index."""

    role: str
    submit: Callable[[Any, int], ray.ObjectRef]
    pending: dict[ray.ObjectRef, int]
    attempts: Attempts
    results: dict[int, Any] = field(default_factory=dict)


class Fleet:
    def __init__(
        self, cfg: Config, run_dir: Path, *, policy: str, version: int, reward: str, env: dict, task: Task
    ) -> None:
        self.cfg, self.run_dir, self.env, self.task = cfg, run_dir, env, task
        self.policy, self.version, self.reward = policy, version, reward
        self.restarts: Counter[str] = Counter()
        self.groups: dict[tuple[str, int], PlacementGroup] = {}
        self.actors: dict[str, dict[int, Any]] = {role: {} for role in ROLES}
        self.leaving: dict[str, set[int]] = {role: set() for role in ROLES}
        self.joining: dict[str, dict[int, tuple[Any, ray.ObjectRef]]] = {role: {} for role in ROLES}
        # An added slot until its bundle is placed: (its placement group's ready(), when it was added).
        self.placing: dict[tuple[str, int], tuple[ray.ObjectRef | None, float]] = {}
        self.given_up: list[str] = []  # the slots `unplaced` gave up, as lines for RUN/status.json
        counts = {"generator": cfg.generation.num_generators, "scorer": cfg.scoring.num_scorers}
        for role in ROLES:
            self.actors[role] = {i: self._new(role, i) for i in range(counts[role])}
        # Every buffer method is idempotent (ids dedupe, state is rebuilt from the journal), so
        # calls made while Ray restarts a dead buffer are simply retried against the new one.
        # It lives on the driver's node: losing a worker node then costs only replaceable actors.
        # (Hard affinity: a soft one is not honoured for 0-CPU actors in Ray 2.60.)
        driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.buffer = BufferActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name="buffer", max_restarts=-1, max_task_retries=-1, scheduling_strategy=driver_node
        ).remote(**buffer_args(cfg, run_dir, task))
        self._wait_placed()

    @property
    def generators(self) -> list[Any]:
        return [self.actors["generator"][i] for i in sorted(self.actors["generator"])]

    @property
    def scorers(self) -> list[Any]:
        return [self.actors["scorer"][i] for i in sorted(self.actors["scorer"])]

    def staying(self, role: str) -> list[int]:
        """The working slots of `role` that are not leaving."""
        return sorted(set(self.actors[role]) - self.leaving[role])

    def wanted(self, role: str) -> list[int]:
        """The slots that count towards the target: staying, and joining."""
        return sorted(set(self.staying(role)) | set(self.joining[role]))

    def add(self, role: str) -> int:
        """Start one more actor of `role` (on the latest policy) in the lowest free slot. It
        joins the fleet (`joined`) once it answers; until then it gets no work or weights."""
        taken = set(self.actors[role]) | set(self.joining[role])
        i = min(set(range(len(taken) + 1)) - taken)
        actor = self._new(role, i)
        self.joining[role][i] = (actor, actor.info.remote())
        group = self.groups.get((role, i))  # none for a slot that reserves nothing
        self.placing[role, i] = (group.ready() if group else None, time.time())
        log.info(
            "scaled up: %s %d starts; it takes work once placed and loaded (given up if not placed within "
            "cluster.placement_timeout_s=%g s; the others carry the work meanwhile)",
            role,
            i,
            self.cfg.cluster.placement_timeout_s,
        )
        return i

    def joined(self, role: str) -> list[int]:
        """The added slots that are ready now, moved into the fleet. A generator that missed a
        weight push while it started is started again on the latest checkpoint."""
        out = []
        for i, (actor, probe) in list(self.joining[role].items()):
            if not ray.wait([probe], timeout=0)[0]:
                continue
            try:
                info = ray.get(probe)
            except RayActorError:
                info = None
            if info is None or (role == "generator" and info["version"] != self.version):
                ray.kill(actor, no_restart=True)
                fresh = self._new(role, i)
                self.joining[role][i] = (fresh, fresh.info.remote())
                continue
            del self.joining[role][i]
            self.placing.pop((role, i), None)
            self.actors[role][i] = actor
            out.append(i)
            log.info("%s %d joined (now %d)", role, i, len(self.actors[role]))
        return out

    def leave(self, role: str, i: int) -> None:
        """Mark slot i to go once its current work is over (`finish` or `remove` ends it); a
        slot still joining goes at once."""
        if i in self.joining[role]:
            ray.kill(self.joining[role].pop(i)[0], no_restart=True)
            self.placing.pop((role, i), None)
            if (group := self.groups.pop((role, i), None)) is not None:
                remove_placement_group(group)
            return
        self.leaving[role].add(i)

    def unplaced(self, role: str) -> list[int]:
        """Give up the added slots of `role` whose bundle the cluster has not placed within
        cluster.placement_timeout_s (no node with room came); returns them."""
        timeout = self.cfg.cluster.placement_timeout_s
        out = []
        for i in list(self.joining[role]):
            ready, since = self.placing[role, i]
            if ready is None or time.time() - since < timeout or ray.wait([ready], timeout=0)[0]:
                continue
            bundle = self.groups[role, i].bundle_specs[0]
            self.leave(role, i)
            line = (
                f"{role} {i} ({bundle}) was not placed within cluster.placement_timeout_s={timeout:g} s "
                f"(free: {_free()}): gave it up; the run goes on with {len(self.wanted(role))}"
            )
            log.warning(line)
            self.given_up = [*self.given_up[-2:], line]
            out.append(i)
        return out

    def scaling_lines(self) -> list[str]:
        """Added slots waiting to be placed, and the last ones given up: for RUN/status.json."""
        timeout = self.cfg.cluster.placement_timeout_s
        waiting = [
            f"{role} {i} waiting to be placed since {time.strftime('%H:%M:%S', time.localtime(since))} "
            f"(given up after {timeout:g} s)"
            for (role, i), (ready, since) in sorted(self.placing.items())
            if ready is not None and not ray.wait([ready], timeout=0)[0]
        ]
        return waiting + self.given_up

    def remove(self, role: str, i: int) -> None:
        """Stop slot i's actor and free its placement group."""
        ray.kill(self.actors[role].pop(i), no_restart=True)
        self.leaving[role].discard(i)
        if (group := self.groups.pop((role, i), None)) is not None:
            remove_placement_group(group)
        log.info("scaled down: %s %d left (now %d)", role, i, len(self.actors[role]))

    def _new(self, role: str, i: int) -> Any:
        return self._generator(i) if role == "generator" else self._scorer(i)

    def _generator(self, i: int) -> Any:
        g = self.cfg.generation
        return GeneratorActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=f"generator-{i}",
            runtime_env=self.env,
            **self._reserve("generator", i, g.cpus_per_generator, g.gpus_per_generator),
        ).remote(cfg=self.cfg, model_path=self.policy, index=i, version=self.version)

    def _scorer(self, i: int) -> Any:
        s = self.cfg.scoring
        return ScorerActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=f"scorer-{i}", runtime_env=self.env, **self._reserve("scorer", i, s.cpus_per_scorer, s.gpus_per_scorer)
        ).remote(cfg=self.cfg, reward_path=self.reward, index=i, task=self.task)

    def _reserve(self, role: str, i: int, cpus: float, gpus: float) -> dict[str, Any]:
        """The actor options of a slot: its resources, in the slot's own placement group (made on
        the slot's first actor, reused by its replacements). A slot that asks for nothing gets none."""
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
        bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
        if not bundle:
            return options
        if (role, i) not in self.groups:
            self.groups[role, i] = placement_group([bundle], strategy="STRICT_PACK")
        strategy = PlacementGroupSchedulingStrategy(self.groups[role, i], placement_group_bundle_index=0)
        return options | {"scheduling_strategy": strategy}

    def _wait_placed(self) -> None:
        """Block until every slot's bundle is placed; one clear error when the cluster can't."""
        timeout = self.cfg.cluster.placement_timeout_s
        ready = {pg.ready(): key for key, pg in self.groups.items()}
        if not ready:
            return
        done, _ = ray.wait(list(ready), num_returns=len(ready), timeout=timeout)
        unplaced = [ready[ref] for ref in ready if ref not in done]
        if unplaced:
            asked = ", ".join(f"{role}-{i} {self.groups[role, i].bundle_specs[0]}" for role, i in unplaced)
            self.close()
            raise UserError(
                f"the cluster could not place {asked} within cluster.placement_timeout_s={timeout:g} s "
                f"(cluster resources: {ray.cluster_resources()}); lower the cpus_per_/gpus_per_ settings "
                "or add nodes"
            )

    def ready(self) -> list[dict]:
        infos = ray.get([g.info.remote() for g in self.generators])
        ray.get([s.info.remote() for s in self.scorers])
        return infos

    def served(self, *, version: int, policy: str) -> None:
        """The generators now serve `version`; a replacement must load `policy` (its checkpoint)."""
        self.version, self.policy = version, policy

    def replace(self, role: str, i: int) -> None:
        actors = self.actors[role]
        ray.kill(actors[i], no_restart=True)
        actors[i] = self._new(role, i)
        self.restarts[role] += 1
        log.warning("%s %d died; replaced it (restarts so far: %d)", role, i, self.restarts[role])

    def heal(self) -> None:
        """Replace every actor that has died, and every generator that does not serve the fleet's
        version (it missed the last push); returns once all answer. A replacement can die too
        (placed on a node before Ray knew the node was gone): it is replaced again."""
        attempts = Attempts("replacing")
        for role in ROLES:
            actors = self.actors[role]
            todo = sorted(actors)
            while todo:
                probes = {i: actors[i].info.remote() for i in todo}
                todo = []
                for i, ref in probes.items():
                    error: RayActorError | None = None
                    try:
                        info = ray.get(ref)
                        if role == "scorer" or info["version"] == self.version:
                            continue
                        log.warning("generator %d serves v%d, not v%d", i, info["version"], self.version)
                    except RayActorError as e:
                        error = e
                    attempts.failed(f"{role} {i}", error)
                    self.replace(role, i)
                    todo.append(i)

    def launch(self, role: str, submit: Callable[[Any, int], ray.ObjectRef], indices: list[int]) -> Launch:
        """Start `submit(actor, i)` for each index without waiting (stages overlap)."""
        actors = self.actors[role]
        return Launch(role, submit, {submit(actors[i], i): i for i in indices}, Attempts(role))

    def submit(self, job: Launch, i: int) -> None:
        """Add slot i's call to a running launch (an actor added mid-stage)."""
        job.pending[job.submit(self.actors[job.role][i], i)] = i

    def finish(self, job: Launch, on_tick: Callable[[], None] = lambda: None) -> dict[int, Any]:
        """Wait for a launch; replace a dead actor and resubmit its share of the work. A leaving
        actor is removed once its call returns (or it dies: its work is then given to the others)."""
        actors = self.actors[job.role]
        while job.pending:
            ready, _ = ray.wait(list(job.pending), num_returns=1, timeout=1.0)
            on_tick()
            for ref in ready:
                i = job.pending.pop(ref)
                try:
                    result = ray.get(ref)
                    job.results[i] = add_up(job.results.get(i), result)
                    if i in self.leaving[job.role]:
                        self.remove(job.role, i)
                    continue
                except RayActorError as e:
                    if i in self.leaving[job.role]:
                        self.remove(job.role, i)
                        continue
                    job.attempts.failed(i, e)
                    if isinstance(e, RayTaskError):  # alive, but an actor it called died (the buffer, restarting)
                        log.warning("%s %d lost an actor it called (%s); retrying", job.role, i, type(e.cause).__name__)
                        time.sleep(1.0)
                    else:
                        self.replace(job.role, i)
                job.pending[job.submit(actors[i], i)] = i
        return job.results

    def retry_dead(self, fn: Callable[[], T], what: str) -> T:
        """fn(), run again after `heal` each time an actor dies under it (MAX_ATTEMPTS tries in all)."""
        attempts = Attempts(what)
        while True:
            try:
                return fn()
            except RayActorError as e:
                attempts.failed("", e)
                log.warning("an actor died during %s (%s); replacing it and trying again", what, type(e).__name__)
                self.heal()

    def close(self) -> None:
        joining = [actor for role in ROLES for actor, _ in self.joining[role].values()]
        for actor in [*self.generators, *self.scorers, *joining, self.buffer]:
            ray.kill(actor, no_restart=True)
        for pg in self.groups.values():
            remove_placement_group(pg)


def _free() -> dict[str, float]:
    return {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}


def add_up(old: dict[str, float] | None, new: Any) -> Any:
    """One slot's results over the stage: counters add up when the slot is run again."""
    if old is None or not isinstance(new, dict):
        return new
    return {k: old.get(k, 0.0) + v for k, v in new.items()} | {k: v for k, v in old.items() if k not in new}
