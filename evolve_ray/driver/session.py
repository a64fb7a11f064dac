"""One run's live handles (`Session`) and its stage list: what every stage module takes, in a
module of its own so that no stage imports the loop that runs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from evolve_ray.config import Config
from evolve_ray.driver.timeline import Timeline, phases, phases_text
from evolve_ray.reporting.report import finite_row
from evolve_ray.rundir import read_json, round_dir, write_json

if TYPE_CHECKING:
    from evolve_ray.driver.fleet import Fleet
    from evolve_ray.driver.preflight import ResolvedModels
    from evolve_ray.reporting.metrics_export import MetricsExporter
    from evolve_ray.reporting.status import StatusWriter
    from evolve_ray.train.job import TrainerGroup

log = logging.getLogger(__name__)
STAGES = ("collect", "train", "evaluate")
Step = tuple[str, "Callable[[Session, int], dict[str, Any]]"]  # a stage: its name and what runs it


@dataclass(kw_only=True)
class Session:
    """Live handles of one run; built once, used by every stage."""

    cfg: Config
    run: Path
    models: ResolvedModels
    fleet: Fleet
    trainer: TrainerGroup
    exporter: MetricsExporter
    task: Any
    control: Any  # the run's RunControl actor (control.py): the counts `evolve-ray scale` asked for
    timeline: Timeline
    state: dict[str, Any] = field(default_factory=dict)
    generator_infos: list[dict[str, Any]] = field(default_factory=list)
    status: StatusWriter | None = None  # RUN/status.json: rescale records slots waiting to be placed there

    @property
    def generators(self) -> list[Any]:
        return self.fleet.generators

    @property
    def scorers(self) -> list[Any]:
        return self.fleet.scorers

    @property
    def buffer(self) -> Any:
        return self.fleet.buffer

    def close(self, *, abort: bool = False) -> None:
        """Stop the trainer group and the actors (names are free again for the next run).
        `abort` (an error or a stop signal): the trainer is stopped at once, not waited for."""
        self.timeline.mark("rounds_done")
        if (ready := self.trainer.ready_at()) is not None:
            self.timeline.mark("trainer_ready", at=ready)
        self.trainer.shutdown(abort=abort)
        self.fleet.close()
        ray.kill(self.control, no_restart=True)
        self.timeline.mark("closed")
        log.info("time outside the rounds: %s (RUN/startup.json)", phases_text(phases(self.timeline.marks)))

    def done(self, round_: int, stage: str) -> bool:
        last = self.state.get("last")
        if last is None:
            return False
        return (last["round"], STAGES.index(last["stage"])) >= (round_, STAGES.index(stage))

    def mark(self, round_: int, stage: str, metrics: dict[str, Any]) -> None:
        path = round_dir(self.run, round_) / "metrics.json"
        metrics = finite_row(metrics)  # NaN (e.g. no pairs to average) is "no value", not a number
        old = read_json(path) if path.exists() else {}
        # Fault counters add up over the round's stages; everything else is the stage's own.
        metrics |= {k: old[k] + v for k, v in metrics.items() if k.startswith("fault/") and k in old}
        merged = old | metrics
        write_json(path, merged)
        self.state["last"] = {"round": round_, "stage": stage}
        write_json(self.run / "state.json", self.state)
        self.exporter.publish(metrics, step=round_)
