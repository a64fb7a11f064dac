"""The run's actors and what happens when one dies.

A generator or scorer that dies mid-round (killed, or its process exits) is replaced by a new
actor serving the latest policy, and its share of the work is submitted again: the buffer's
journal holds every candidate and score already streamed, so the planner resumes each prompt
where it stopped and nothing is generated or paired twice. One that dies between stages (after
its share of the round is done, during training or the weight push) is found by `heal`, which
the driver calls after training and before evaluating. Restarts are counted for the report.

Each generator and scorer slot reserves its CPUs and GPUs in a placement group of its own, made
once and kept for the run: a replacement takes the slot's bundle again, and when the bundle's
node dies Ray places the bundle on another node. The run stops with one clear error when the
cluster cannot place a slot's bundle in `cluster.placement_timeout_s`.
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
from evolve_ray.errors import UserError
from evolve_ray.retry import Attempts
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
        self.generators = [self._generator(i) for i in range(cfg.generation.num_generators)]
        self.scorers = [self._scorer(i) for i in range(cfg.scoring.num_scorers)]
        # Every buffer method is idempotent (ids dedupe, state is rebuilt from the journal), so
        # calls made while Ray restarts a dead buffer are simply retried against the new one.
        # It lives on the driver's node: losing a worker node then costs only replaceable actors.
        # (Hard affinity: a soft one is not honoured for 0-CPU actors in Ray 2.60.)
        driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.buffer = BufferActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name="buffer", max_restarts=-1, max_task_retries=-1, scheduling_strategy=driver_node
        ).remote(cfg, str(run_dir), task)
        self._wait_placed()

    def _generator(self, i: int) -> Any:
        g = self.cfg.generation
        return GeneratorActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=f"generator-{i}",
            runtime_env=self.env,
            **self._reserve("generator", i, g.cpus_per_generator, g.gpus_per_generator),
        ).remote(self.cfg, self.policy, i, self.version)

    def _scorer(self, i: int) -> Any:
        s = self.cfg.scoring
        return ScorerActor.options(  # type: ignore[attr-defined]  # a @ray.remote class
            name=f"scorer-{i}", runtime_env=self.env, **self._reserve("scorer", i, s.cpus_per_scorer, s.gpus_per_scorer)
        ).remote(self.cfg, self.reward, i, self.task)

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
        actors = self.generators if role == "generator" else self.scorers
        ray.kill(actors[i], no_restart=True)
        actors[i] = self._generator(i) if role == "generator" else self._scorer(i)
        self.restarts[role] += 1
        log.warning("%s %d died; replaced it (restarts so far: %d)", role, i, self.restarts[role])

    def heal(self) -> None:
        """Replace every actor that has died, and every generator that does not serve the fleet's
        version (it missed the last push); returns once all answer. A replacement can die too
        (placed on a node before Ray knew the node was gone): it is replaced again."""
        attempts = Attempts("replacing")
        for role in ROLES:
            actors = self.generators if role == "generator" else self.scorers
            todo = list(range(len(actors)))
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
        actors = self.generators if role == "generator" else self.scorers
        return Launch(role, submit, {submit(actors[i], i): i for i in indices}, Attempts(role))

    def finish(self, job: Launch, on_tick: Callable[[], None] = lambda: None) -> dict[int, Any]:
        """Wait for a launch; replace a dead actor and resubmit its share of the work."""
        actors = self.generators if job.role == "generator" else self.scorers
        while job.pending:
            ready, _ = ray.wait(list(job.pending), num_returns=1, timeout=1.0)
            on_tick()
            for ref in ready:
                i = job.pending.pop(ref)
                try:
                    job.results[i] = ray.get(ref)
                    continue
                except RayActorError as e:
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
        for actor in [*self.generators, *self.scorers, self.buffer]:
            ray.kill(actor, no_restart=True)
        for pg in self.groups.values():
            remove_placement_group(pg)
