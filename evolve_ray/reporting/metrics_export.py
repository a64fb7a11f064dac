"""Export the project's metrics to Ray's metrics endpoint (Prometheus; the dashboard's Grafana
view reads it) and to optional trackers. The same keys as report.json."""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)


def prometheus_name(key: str) -> str:
    """`gen/tokens_per_s` -> `evolve_ray_gen_tokens_per_s` (Prometheus allows [a-zA-Z0-9_:])."""
    return "evolve_ray_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class MetricsExporter:
    def __init__(self, run_name: str, trackers: list[str], config: dict[str, Any], log_dir: str) -> None:
        from ray.util.metrics import Gauge

        self._gauge_cls = Gauge
        self.gauges: dict[str, Any] = {}
        self.run_name = run_name
        self.trackers = [_open_tracker(t, run_name, config, log_dir) for t in trackers]

    def publish(self, row: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in scalars.items():
            gauge = self.gauges.get(key)
            if gauge is None:
                gauge = self._gauge_cls(prometheus_name(key), description=key, tag_keys=("run",))
                self.gauges[key] = gauge
            gauge.set(value, tags={"run": self.run_name})
        for tracker in self.trackers:
            tracker(scalars, step)


def _open_tracker(name: str, run_name: str, config: dict[str, Any], log_dir: str):
    """A callable(metrics, step) for an optional tracker; clear error when it isn't installed."""
    from evolve_ray.errors import UserError

    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=log_dir)

            def publish(m: dict[str, float], step: int) -> None:
                for k, v in m.items():
                    writer.add_scalar(k, v, step)
                writer.flush()

            return publish
        if name == "wandb":
            import wandb

            wandb_run = wandb.init(project="evolve_ray", name=run_name, config=config)
            return lambda m, step: wandb_run.log(m, step=step)
        if name == "mlflow":
            import mlflow

            mlflow.start_run(run_name=run_name)
            return lambda m, step: mlflow.log_metrics({k.replace("/", "."): v for k, v in m.items()}, step=step)
    except ImportError as e:
        raise UserError(f"run.trackers: {name} is not installed ({e.name}); pip install it or remove it") from None
    raise UserError(f"run.trackers: unknown tracker {name!r}")
