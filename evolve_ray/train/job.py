"""The driver's handle on the trainer: one Ray Train worker group that lives across rounds.

`TrainerGroup.start()` runs `TorchTrainer.fit()` in a background thread; the workers then pull
one `RoundJob` per round from a small coordinator actor and hand their metrics back to it.
`train_round` blocks until a round is trained, saved and pushed, and raises `TrainerError` (not
a hang) if the worker group dies for good.

Ray Train retries a worker group it cannot place without end (its 60-second start-up timeout,
again and again): a group not started within `cluster.placement_timeout_s` of `start()` ends the
run with one line naming what it asked for (`TrainerUnplaced`). A callback in Ray Train's
controller (`GroupWatch`) tells the coordinator when the group started and hands it the
controller's handle, so that a group that never starts, or a run that stops, is ended at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evolve_ray.config import Config
from evolve_ray.errors import UserError
from evolve_ray.train.round_job import RoundJob
from evolve_ray.train.worker import train_loop_per_worker
from evolve_ray.types import PreferencePair

logger = logging.getLogger(__name__)


class TrainerError(RuntimeError):
    """The worker group failed (after any restarts FailureConfig allowed)."""


class TrainerUnplaced(UserError):
    """The cluster did not place and start the worker group within cluster.placement_timeout_s."""


@ray.remote(num_cpus=0)
class TrainCoordinator:
    """Hands round jobs to the workers and collects what each rank reports back.

    Jobs stay pending until every rank has submitted, so a worker group restarted by Ray Train
    asks again for the first round after its last checkpoint and gets the same job.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.jobs: dict[int, RoundJob] = {}
        self.parts: dict[int, dict[int, tuple[dict[str, Any], dict[str, float] | None]]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.completed: tuple[int, str, dict[str, Any]] | None = None  # (round, checkpoint dir, metrics)
        self.stopped = False
        self.first_request: float | None = None
        self.group_started: float | None = None  # when Ray Train last started the worker group
        self.controller: list[Any] = []  # Ray Train's controller actor, once it runs
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _pending(self, last_done: int) -> RoundJob | None:
        later = [r for r in self.jobs if r > last_done]
        return self.jobs[min(later)] if later else None

    async def put_job(self, job: RoundJob) -> None:
        self.jobs[job.round] = job
        await self._notify()

    async def stop(self) -> None:
        self.stopped = True
        await self._notify()

    async def next_job(self, last_done: int) -> RoundJob | None:
        """The first pending round after `last_done`; None once stopped with nothing pending."""
        if self.first_request is None:
            self.first_request = time.time()
        async with self.changed:
            await self.changed.wait_for(lambda: self.stopped or self._pending(last_done) is not None)
        return self._pending(last_done)

    async def submit(self, round_: int, rank: int, facts: dict[str, Any], metrics: dict[str, float] | None) -> None:
        parts = self.parts.setdefault(round_, {})
        parts[rank] = (facts, metrics)
        if len(parts) < self.world_size:
            return
        ranks = [parts[r][0] for r in range(self.world_size)]
        result: dict[str, Any] = dict(parts[0][1] or {})
        result["train/worker_pids"] = [f["pid"] for f in ranks]
        result["train/param_checksums"] = [f["param_checksums"] for f in ranks]
        self._complete(round_, result)
        await self._notify()

    async def resumed(self, last_done: int, metrics: dict[str, float]) -> None:
        """A restarted group already finished `last_done` (it crashed before everyone submitted)."""
        for r in [r for r in self.jobs if r <= last_done]:
            self._complete(r, dict(metrics) | {"train/resumed": 1.0})
        await self._notify()

    def _complete(self, round_: int, result: dict[str, Any]) -> None:
        self.results[round_] = result
        job = self.jobs.pop(round_, None)
        self.parts.pop(round_, None)
        if job is not None and (self.completed is None or round_ > self.completed[0]):
            scalars = {k: v for k, v in result.items() if isinstance(v, float)}
            self.completed = (round_, job.checkpoint_dir, scalars)

    def last_completed(self) -> tuple[int, str, dict[str, Any]] | None:
        """The newest round every rank finished: where a restarted worker group resumes."""
        return self.completed

    async def result(self, round_: int) -> dict[str, Any]:
        async with self.changed:
            await self.changed.wait_for(lambda: round_ in self.results)
        return self.results.pop(round_)

    def started_at(self) -> float | None:
        return self.first_request

    def controller_running(self, handle: list[Any]) -> None:
        self.controller = handle

    def worker_group_started(self) -> None:
        self.group_started = time.time()

    def placement(self) -> tuple[float | None, list[Any]]:
        """(when the worker group started, or None; the controller's handle in a list, or [])."""
        return self.group_started, self.controller


class GroupWatch(ControllerCallback, WorkerGroupCallback):
    """Runs in Ray Train's controller: hands the coordinator the controller's handle and the time
    the worker group started (no waiting on the reply: the controller's loop is async)."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator

    def after_controller_start(self, train_run_context: Any) -> None:
        self.coordinator.controller_running.remote([ray.get_runtime_context().current_actor])

    def after_worker_group_start(self, worker_group: Any) -> None:
        self.coordinator.worker_group_started.remote()


class RunTrainer(TorchTrainer):
    """`TorchTrainer` without two of Ray Train's default callbacks this trainer has no use for.

    The datasets callback starts a dataset-manager actor and hands every worker Ray Data's
    context before the worker group counts as started; no Ray Dataset is passed here (the pairs
    come in each round's job), and without it the group was ready 1.5 s sooner (17.2 s against
    18.7 s, mean of 4 starts each on an idle 2-core machine).

    The placement-group cleaner is a detached actor that asks the State API every second whether the
    controller is alive. The State API is served by the dashboard, which the cleaner finds through
    the machine's latest `ray start` address file when there is one. Without a dashboard it logs a
    warning every second; with a stale address file each query blocks for up to 40 s, and at the end
    of every run the controller waited 12 s for the cleaner to stop. Nothing is lost without it: the
    worker group's placement group belongs to the run's job, which Ray removes when the driver ends,
    and a controller that dies fails `fit()`, so the run stops with a TrainerError
    (docs/platform.md).
    """

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()  # type: ignore[misc]  # v2's TorchTrainer has it
        try:  # Ray Train v2's callbacks (private); another layout keeps the stock callbacks
            from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        except ImportError:
            return callbacks
        return [c for c in callbacks if not isinstance(c, (DatasetsCallback, PlacementGroupCleanerCallback))]


class TrainerGroup:
    """A long-lived data-parallel trainer; `train_round` once per round, `shutdown` at the end."""

    def __init__(
        self, cfg: Config, start_model: str, run_dir: Path, tokenizer_path: str, *, reference_model: str | None = None
    ) -> None:
        self.cfg = cfg
        self.start_model = start_model
        # reference=fixed scores against the run's starting model; a resumed run passes it here.
        self.reference_model = reference_model or start_model
        self.run_dir = Path(run_dir).resolve()
        self.tokenizer_path = tokenizer_path
        self.coordinator: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._launched_at = 0.0
        self._started = False  # the worker group started (GroupWatch said so)

    def checkpoint_dir(self, round_: int) -> Path:
        return self.run_dir / "checkpoints" / f"r{round_:03d}"

    def start(self) -> None:
        """Launch the worker group in the background (start-up overlaps whatever runs next)."""
        t = self.cfg.training
        # On the driver's node (like the buffer, fleet.py): the round's state must not die with a worker node.
        driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.coordinator = TrainCoordinator.options(scheduling_strategy=driver_node).remote(t.num_workers)  # type: ignore[attr-defined]  # a @ray.remote class: mypy sees the plain class
        trainer = RunTrainer(
            train_loop_per_worker,
            train_loop_config={
                "cfg": self.cfg,
                "start_model": self.start_model,
                "reference_model": self.reference_model,
                "tokenizer_path": self.tokenizer_path,
                "run_dir": str(self.run_dir),
                "coordinator": self.coordinator,
            },
            scaling_config=ScalingConfig(
                num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
            ),
            run_config=RunConfig(
                name="trainer",
                storage_path=str(self.run_dir / "ray_train"),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[GroupWatch(self.coordinator)],  # type: ignore[list-item]  # v2 takes any RayTrainCallback
            ),
        )
        self._launched_at = time.time()
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="evolve-trainer", daemon=True)
        self._thread.start()

    def _fit(self, trainer: TorchTrainer) -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the driver thread by _wait
            self._error = e

    def startup_seconds(self) -> float | None:
        """Seconds from start() to the workers' first job request (None while still starting)."""
        first = self.ready_at()
        return None if first is None else first - self._launched_at

    def ready_at(self) -> float | None:
        """When the workers first asked for a job (epoch seconds); None if not yet, or if the
        coordinator is gone (a failed group reports its own error elsewhere)."""
        if self.coordinator is None:
            return None
        try:
            return ray.get(self.coordinator.started_at.remote(), timeout=10)
        except (ray.exceptions.RayError, TimeoutError):
            return None

    def train_round(self, round_: int, pairs: Sequence[PreferencePair], generators: Sequence[Any]) -> dict[str, Any]:
        """Train on `pairs`, write checkpoints/rNNN, push version round_+1 to `generators`.

        Returns the round's metrics (rank 0's scalars, plus per-rank lists train/worker_pids and
        train/param_checksums).
        """
        if self._thread is None:
            raise TrainerError("TrainerGroup.start() was not called")
        job = RoundJob(
            round=round_,
            submitted_at=time.time(),  # before the pairs are put: the whole hand-off counts
            pairs=[ray.put(list(pairs))],
            generators=[ray.put(list(generators))] if generators else [],
            checkpoint_dir=str(self.checkpoint_dir(round_)),
            transport=self.cfg.sync.transport,
        )
        ray.get(self.coordinator.put_job.remote(job))
        return self._wait(self.coordinator.result.remote(round_), f"round {round_}")

    def _wait(self, ref: ray.ObjectRef, what: str) -> Any:
        """ray.get that gives up with the trainer's own error once the fit thread has ended."""
        assert self._thread is not None
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            if ready:
                return ray.get(ref)
            self.check_started()
            if not self._thread.is_alive():
                ready, _ = ray.wait([ref], timeout=1.0)
                if ready:
                    return ray.get(ref)
                cause = self._error or RuntimeError("the training loop returned early")
                raise TrainerError(f"trainer failed during {what}: {type(cause).__name__}: {cause}") from cause

    def check_started(self) -> None:
        """Raise `TrainerUnplaced` (one line) once the worker group has not started within
        cluster.placement_timeout_s of `start()`. Cheap until then: no remote call."""
        timeout = self.cfg.cluster.placement_timeout_s
        if self._started or self._thread is None or time.time() - self._launched_at < timeout:
            return
        self._started = ray.get(self.coordinator.placement.remote(), timeout=30)[0] is not None
        if self._started:
            return
        t = self.cfg.training
        each = {"CPU": t.cpus_per_worker} | ({"GPU": 1.0} if t.use_gpu else {})
        free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        raise TrainerUnplaced(
            f"the trainer group ({t.num_workers} workers x {each}) was not placed and started within "
            f"cluster.placement_timeout_s={timeout:g} s: the cluster has {free} free of {total}, with the run's "
            "generators and scorers placed; lower training.num_workers or cpus_per_worker, free the cluster's "
            "resources, or add nodes"
        )

    def _kill_controller(self, wait_s: float = 10.0) -> bool:
        """Kill Ray Train's controller (its workers and placement group go with it). Its handle
        comes from GroupWatch once the controller runs: waited for up to `wait_s` (a controller
        not yet running then ends with the driver's job)."""
        assert self._thread is not None
        deadline = time.time() + wait_s
        while self._thread.is_alive() and time.time() < deadline:
            _, controller = ray.get(self.coordinator.placement.remote(), timeout=30)
            if controller:
                ray.kill(controller[0], no_restart=True)
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Ask the workers to stop once no job is pending, without waiting: the group's teardown
        then overlaps whatever the driver does next (`shutdown` waits for it)."""
        if self._thread is not None:
            ray.get(self.coordinator.stop.remote())

    def shutdown(self, timeout_s: float = 120.0, *, abort: bool = False) -> None:
        """Ask the workers to stop, wait for fit() to return, drop the coordinator. With `abort`, or
        when the group never started (its workers would never see the stop), Ray Train's controller
        is killed instead: its workers and placement group go with it."""
        if self._thread is None:
            return
        ray.get(self.coordinator.stop.remote())
        started, _ = ray.get(self.coordinator.placement.remote(), timeout=30)
        killed = False
        if abort or started is None:
            killed = self._kill_controller()
            timeout_s = 10.0  # fit() returns once it sees its controller gone
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("trainer did not stop within %.0f s", timeout_s)
        ray.kill(self.coordinator)
        self._thread = None
        if self._error is not None and not killed:
            logger.warning("trainer ended with an error: %s", self._error)
