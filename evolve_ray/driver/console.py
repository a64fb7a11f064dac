"""What the console shows, and the run's log file.

Quiet by default: the project's own INFO lines (one per stage, with its key figures), progress
bars, and warnings from anywhere. Everything else (Ray's info lines, and every line the actors
print: vLLM's engine logs, Ray Train's per-rank "Reporting training result" dicts, library
warnings, tracebacks a Ray Train helper prints while the cluster shuts down) goes to RUN/run.log
only. `--verbose` prints it all as well. An entry point chooses once with `setup()`; code that
never calls it (tests, library use) keeps Python's and Ray's defaults, and still gets run.log.

Actor output reaches the driver through Ray's log forwarding (`ray.init(log_to_driver=True)`):
its stream dispatcher is where the lines are routed, to the file and, in verbose mode, to Ray's
own printer too. No ray import at module level (the pure layers import this module's users).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RUN_LOG = "run.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER = "evolve_ray_run_log"  # our name in Ray's stream dispatcher
# An actor's own warnings (Python's default format in a worker: "WARNING:evolve_ray.x:...") still
# need the user's eye in quiet mode.
_ACTOR_WARNING = re.compile(r"^(WARNING|ERROR|CRITICAL):evolve_ray[\w.]*:(.*)$")
_AUTOSCALER_EVENT = ":event_summary:"  # Ray's token before an autoscaler event in the monitor's log

_verbose = True  # until an entry point calls setup()
_console: logging.Handler | None = None  # the console handler setup() made


class _QuietFilter(logging.Filter):
    """The project's own lines (from the handler's level up), anyone's WARNING and up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("evolve_ray")


class _QuietFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        return f"{self.formatTime(record, '%H:%M:%S')} {level}{record.getMessage()}"


def setup(*, verbose: bool, level: str = "INFO") -> None:
    """Configure the process's console once, at an entry point (`set_level` changes its level
    once the config, and so run.log_level, is known)."""
    global _verbose, _console
    _verbose = verbose
    _console = logging.StreamHandler(sys.stderr)
    if verbose:
        _console.setFormatter(logging.Formatter(_FORMAT))
    else:
        _console.addFilter(_QuietFilter())
        _console.setFormatter(_QuietFormatter())
    logging.getLogger().addHandler(_console)
    set_level(level)


def set_level(level: str) -> None:
    """The console shows records from `level` up (run.log_level); RUN/run.log keeps INFO and up
    whatever it is (DEBUG too when asked for). No console set up (library use): nothing changes."""
    if _console is None:
        return
    _console.setLevel(level)
    logging.getLogger().setLevel(min(logging.INFO, logging.getLevelName(level)))


def _quiet_ray_logger() -> None:
    # Ray's "ray" logger prints through its own handler and does not propagate: keep its
    # warnings on the console, send its info lines ("Started a local Ray instance", ...) to run.log.
    for h in logging.getLogger("ray").handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


class _ActorLines:
    """Ray's dispatcher handler: one batch of forwarded actor output into run.log; in quiet mode
    an evolve_ray warning also goes to the console."""

    def __init__(self, path: Path, verbose: bool) -> None:
        self.path, self.verbose, self.writable = path, verbose, True

    def __call__(self, data: dict[str, Any]) -> None:
        if data.get("pid") == "autoscaler":
            prefix, lines = "(autoscaler)", list(_autoscaler_events(data.get("lines", [])))
        else:
            who = data.get("actor_name") or data.get("task_name") or "worker"
            prefix, lines = f"({who} pid={data.get('pid')})", data.get("lines", [])
        if not lines:
            return
        if self.writable:
            try:
                with open(self.path, "a", encoding="utf-8", errors="replace") as f:
                    f.writelines(f"{prefix} {line}\n" for line in lines)
            except OSError:  # a full disk: the run's own writes report it, as one line
                self.writable = False
        if not self.verbose:
            for line in lines:
                m = _ACTOR_WARNING.match(line)
                if m:
                    print(f"{m.group(1)} {prefix} {m.group(2)}", file=sys.stderr)


def _autoscaler_events(lines: list[str]) -> Iterator[str]:
    """The autoscaler's events among its forwarded log lines, as Ray's own printer keeps them: its
    status block, every 5 s, would otherwise make up most of run.log."""
    for line in lines:
        if _AUTOSCALER_EVENT in line:
            yield line.split(_AUTOSCALER_EVENT, 1)[1]
        elif line.startswith("{"):  # autoscaler v2 forwards its events as JSON records
            try:
                message = json.loads(line).get("message")
            except (ValueError, AttributeError):
                continue
            if message:
                yield str(message)


class _RunLogHandler(logging.FileHandler):
    """run.log for driver records; after a failed write (a full disk) it goes silent instead of
    printing logging's traceback for every record: the run's own writes report the disk."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def flush(self) -> None:
        if not self.failed:
            try:
                super().flush()
            except (OSError, ValueError):
                self.failed = True

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):  # the buffered lines of a failed write
            if not self.failed:
                raise


def route_actor_output(run_dir: Path) -> None:
    """Send the actors' forwarded output to RUN/run.log (and, verbose, to the console as Ray does).

    Call after ray.init. The handler stays until the next run replaces it: lines Ray forwards
    while the cluster shuts down still land in the file, not on the console.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(_HANDLER)
    if not _verbose:
        dispatcher.remove_handler("ray_print_logs")  # Ray's printer to stdout/stderr
    dispatcher.add_handler(_HANDLER, _ActorLines(run_dir / RUN_LOG, _verbose))


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Every driver log record (the project's, Ray's, libraries') also goes to RUN/run.log."""
    path = run_dir / RUN_LOG
    handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    loggers = [logging.getLogger(), logging.getLogger("ray")]
    if not _verbose:
        _quiet_ray_logger()  # before ray.init: its "Started a local Ray instance" line goes to the file
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
