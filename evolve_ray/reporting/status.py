"""A run's state, readable from any machine that sees its directory (`evolve-ray status RUN`).

The driver keeps RUN/status.json current: its state (starting, running, finished, failed), the
round and stage it is in, the policy version the generators serve, the generators, and a
heartbeat rewritten every HEARTBEAT_S seconds, so a reader can tell a live run from one whose
driver died, and the slots `evolve-ray scale` added that wait to be placed or were given up. The rest comes from files the run writes anyway: state.json (last completed stage),
rounds/rNNN/metrics.json (the current round's finished stages) and report.json. Pure: no ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from evolve_ray.errors import UserError
from evolve_ray.reporting.report import load_rows
from evolve_ray.reporting.summary import headline_text, stage_line
from evolve_ray.rundir import read_json, round_dir, write_json

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 6 * HEARTBEAT_S  # a busy driver or slow shared storage may miss a few beats
STAGES = ("collect", "train", "evaluate")


class StatusWriter:
    """The driver's side: RUN/status.json at every change, and a heartbeat thread in between."""

    def __init__(self, run_dir: Path, *, rounds: int) -> None:
        self.path = run_dir / STATUS_FILE
        now = time.time()
        self.doc: dict[str, Any] = {
            "state": "starting",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now,
            "heartbeat_at": now,
            "rounds": rounds,
            "round": None,
            "stage": None,
            "policy_version": None,
            "generators": [],
            "scaling": [],  # slots `evolve-ray scale` added that wait to be placed, or were given up (fleet.py)
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.update()
        self._thread = threading.Thread(target=self._beat, name="evolve-status", daemon=True)
        self._thread.start()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.doc |= fields | {"heartbeat_at": time.time()}
            write_json(self.path, self.doc)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update()
            except OSError as e:  # RunDirError too: the driver's own next write reports it as one line
                log.debug("status heartbeat stopped: %s", e)
                return

    def close(self, state: str, error: str | None = None) -> None:
        """Stop the heartbeat and record how the driver ended (finished, failed, interrupted)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.update(state=state, ended_at=time.time(), error=error)
        except OSError as e:  # a full disk must not hide the error that ended the run
            log.debug("cannot record the final status: %s", e)


# ----------------------------------------------------------------------------------------------
# The reader's side


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"


def read_status(run: Path, now: float | None = None) -> dict[str, Any]:
    """Everything `evolve-ray status` shows, as a dict (see `format_status`)."""
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run directory (no config.yaml)")
    now = time.time() if now is None else now
    doc = read_json(run / STATUS_FILE) if (run / STATUS_FILE).is_file() else {}
    state: dict[str, Any] = read_json(run / "state.json") if (run / "state.json").is_file() else {"last": None}
    out: dict[str, Any] = dict(doc)
    out["last_completed"] = state.get("last")
    age = now - doc["heartbeat_at"] if doc else None
    out["heartbeat_age_s"] = age
    live = doc.get("state") in ("starting", "running")
    out["running"] = bool(live and age is not None and age < STALE_AFTER_S)
    if live and not out["running"]:
        out["state"] = "stopped"  # the driver stopped beating: killed, crashed, or its machine is gone
    out["wall_s"] = None
    if doc:
        end = doc.get("ended_at") or (now if out["running"] else doc["heartbeat_at"])
        out["wall_s"] = end - doc["started_at"]
    current = doc.get("round")
    if current is None and state.get("last"):
        current = state["last"]["round"]
    out["round_metrics"] = {}
    if current is not None and (round_dir(run, current) / "metrics.json").is_file():
        out["round_metrics"] = read_json(round_dir(run, current) / "metrics.json")
    out["round"] = current
    out["rows"] = load_rows(run)
    return out


def format_status(run: Path, now: float | None = None) -> str:
    st = read_status(run, now)
    lines = [f"run: {run.resolve()}"]
    state = st.get("state", "unknown (no status.json: a run from before status files, or not started)")
    if st["running"]:
        state += f" (pid {st['pid']} on {st['host']}; heartbeat {st['heartbeat_age_s']:.0f} s ago)"
    elif state == "stopped":
        state += (
            f" (no heartbeat for {_duration(st['heartbeat_age_s'])}: the driver is gone; "
            f"continue with `evolve-ray run --resume {run}`)"
        )
    elif state == "failed" and st.get("error"):
        state += f": {st['error']}"
    lines.append(f"state: {state}")
    if st.get("round") is not None:
        rounds = f" (rounds 0-{st['rounds'] - 1})" if st.get("rounds") else ""
        where = f"round {st['round']}{rounds}"
        if st["running"] and st.get("stage"):
            where += f", stage {st['stage']}"
        last = st["last_completed"]
        done = f"{last['stage']} of round {last['round']}" if last else "nothing yet"
        lines.append(f"at: {where} (last completed: {done})")
    if st.get("policy_version") is not None:
        lines.append(f"policy version: {st['policy_version']}")
    if st.get("generators"):
        lines.append(f"generators: {len(st['generators'])} ({', '.join(st['generators'])})")
    lines += [f"scaling: {line}" for line in st.get("scaling", [])]
    if st.get("wall_s") is not None:
        lines.append(f"wall time: {_duration(st['wall_s'])}")
    m, r = st["round_metrics"], st.get("round")
    finished_rows = {row["round"] for row in st["rows"]}
    if m and r is not None and r not in finished_rows:
        lines += [stage_line(r, s, m) for s in STAGES if f"time/{s}_s" in m]
    lines += ["", headline_text(st["rows"])]
    return "\n".join(lines)


def status_json(run: Path, now: float | None = None) -> str:
    st = read_status(run, now)
    return json.dumps({k: v for k, v in st.items() if k != "rows"} | {"rounds_done": len(st["rows"])}, indent=2)
