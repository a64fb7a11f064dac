"""`evolve-ray status` from the run directory alone, and the quiet console's routing rules."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from evolve_ray.driver import console
from evolve_ray.errors import UserError
from evolve_ray.reporting.report import append_row
from evolve_ray.reporting.status import STALE_AFTER_S, StatusWriter, format_status, read_status
from evolve_ray.rundir import round_dir, write_json


@pytest.fixture
def run(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text("run:\n  rounds: 2\n")
    return tmp_path


def test_status_of_a_running_run_then_a_finished_one(run: Path) -> None:
    w = StatusWriter(run, rounds=2)
    try:
        w.update(state="running", generators=["0:vllm", "1:vllm"], policy_version=1)
        w.update(round=1, stage="train")
        write_json(run / "state.json", {"last": {"round": 1, "stage": "collect"}})
        write_json(round_dir(run, 1) / "metrics.json", {"pairs/count": 7.0, "gen/prompts": 8.0, "time/collect_s": 2.0})
        append_row(run, {"round": 0, "eval/turn_0_accuracy": 0.5, "eval/turn_1_accuracy": 0.25, "pairs/count": 6.0})
        text = format_status(run)
        assert read_status(run)["running"]
    finally:
        w.close("finished")
    assert "state: running (pid" in text
    assert "at: round 1 (rounds 0-1), stage train (last completed: collect of round 1)" in text
    assert "policy version: 1" in text and "generators: 2 (0:vllm, 1:vllm)" in text
    assert "round 1 collect: 8 prompts, - candidates, 7 pairs" in text  # the current round's finished stage
    assert "0                0.500   0.250" in text  # the headline of finished rounds
    done = format_status(run)
    assert "state: finished" in done and ", stage" not in done and not read_status(run)["running"]


def test_a_driver_that_stopped_beating_reads_as_stopped_with_the_resume_hint(run: Path) -> None:
    w = StatusWriter(run, rounds=2)
    w._stop.set()  # the heartbeat thread ends as if the driver were killed; status.json says running
    w.update(state="running", round=0, stage="collect")
    st = read_status(run, now=json.loads((run / "status.json").read_text())["heartbeat_at"] + STALE_AFTER_S + 1)
    assert st["state"] == "stopped" and not st["running"]
    assert "evolve-ray run --resume" in format_status(run, now=st["heartbeat_at"] + STALE_AFTER_S + 1)


def test_status_of_a_directory_that_is_no_run_is_one_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a run directory"):
        format_status(tmp_path)


def test_actor_lines_go_to_the_file_and_only_project_warnings_to_the_console(tmp_path: Path, capsys) -> None:
    batch = {
        "actor_name": "GeneratorActor",
        "pid": 42,
        "lines": ["INFO 12-02 [inplace.py:91] Reloading weights inplace...", "WARNING:evolve_ray.x:disk nearly full"],
    }
    console._ActorLines(tmp_path / "run.log", False)(batch)
    assert (tmp_path / "run.log").read_text().count("(GeneratorActor pid=42) ") == 2
    assert capsys.readouterr().err == "WARNING (GeneratorActor pid=42) disk nearly full\n"
    console._ActorLines(tmp_path / "run.log", True)(batch)  # verbose: Ray's own printer shows them
    assert capsys.readouterr().err == ""


def test_autoscaler_status_stays_out_of_the_run_log_and_its_events_go_in(tmp_path: Path) -> None:
    """Ray forwards the autoscaler's log with pid "autoscaler": a status block every 5 s (most of a
    demo's run.log before) and, rarely, an event. Only the events are kept, as Ray's printer does."""
    status = [
        "2026-12-03 06:56:32,366\tINFO autoscaler.py:408 -- ",
        "======== Autoscaler status: 2026-12-03 06:56:32.366570 ========",
        "Node status",
        " 0.75/2.0 CPU (0.75 used of 0.75 reserved in placement groups)",
    ]
    event = "2026-12-03 06:57:00,001\tINFO autoscaler.py:500 -- :event_summary:Adding 1 node(s) of type worker."
    v2_event = json.dumps({"message": "Resized to 2 CPUs.", "severity": "INFO"})
    log = tmp_path / "run.log"
    lines = console._ActorLines(log, False)
    lines({"pid": "autoscaler", "lines": status})
    assert not log.exists()  # nothing to write: no empty batch either
    lines({"pid": "autoscaler", "lines": [*status, event, v2_event, "{not json"]})
    assert log.read_text().splitlines() == [
        "(autoscaler) Adding 1 node(s) of type worker.",
        "(autoscaler) Resized to 2 CPUs.",
    ]


def test_quiet_filter_keeps_project_info_and_everyone_s_warnings() -> None:
    f = console._QuietFilter()

    def rec(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, "x.py", 1, "m", None, None)

    assert f.filter(rec("evolve_ray.driver.loop", logging.INFO)) and f.filter(rec("ray.train", logging.WARNING))
    assert not f.filter(rec("ray.train", logging.INFO))
    assert f.filter(rec("evolve_ray.driver.loop", logging.DEBUG))  # the handler's level (run.log_level) decides


@pytest.mark.parametrize(("verbose", "level"), [(False, "WARNING"), (False, "DEBUG"), (True, "ERROR")])
def test_run_log_level_reaches_the_console_and_run_log_keeps_info(tmp_path: Path, verbose: bool, level: str) -> None:
    """The console is set up before the config is read; the driver then applies run.log_level
    (console.set_level, called by loop.drive and loop.eval_model). run.log keeps INFO and up."""
    code = (
        "import logging\n"
        "from pathlib import Path\n"
        "from evolve_ray.driver import console\n"
        f"console.setup(verbose={verbose})\n"
        f"console.set_level({level!r})\n"
        f"with console.run_log(Path({str(tmp_path)!r})):\n"
        "    log = logging.getLogger('evolve_ray.driver.loop')\n"
        "    log.debug('a debug line'); log.info('an info line'); log.warning('a warning line')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    shown = {x for x in ("debug", "info", "warning") if f"{x} line" in r.stderr}
    expected = {"WARNING": {"warning"}, "DEBUG": {"debug", "info", "warning"}, "ERROR": set()}[level]
    assert shown == expected, r.stderr
    kept = (tmp_path / "run.log").read_text()
    assert "an info line" in kept and "a warning line" in kept
    assert ("a debug line" in kept) == (level == "DEBUG")


def _big_run(run: Path) -> None:
    """A run whose status JSON is larger than a pipe holds (64 KiB)."""
    write_json(run / "state.json", {"last": {"round": 0, "stage": "collect"}})
    write_json(round_dir(run, 0) / "metrics.json", {f"gen/skipped_reason_{i:05d}": float(i) for i in range(4000)})


def test_status_json_into_a_reader_that_stops_is_no_traceback(run: Path) -> None:
    """`evolve-ray status RUN --json | head`: head exits after its lines; the rest of the output
    has nowhere to go. Exit 141 (as a command SIGPIPE ends), nothing on stderr."""
    _big_run(run)
    for argv in (["status", str(run), "--json"], ["print-config"]):
        p = subprocess.Popen(
            [sys.executable, "-m", "evolve_ray.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.read(10)
        p.stdout.close()  # the reader is gone
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_run_log_that_cannot_be_written_goes_silent(tmp_path: Path, capsys) -> None:
    """A full disk: no logging traceback per record (the run's own writes report the disk)."""
    lines = console._ActorLines(tmp_path / "no-such-dir" / "run.log", False)
    lines({"pid": 1, "lines": ["x"]})
    assert not lines.writable
    handler = console._RunLogHandler(tmp_path / "run.log", encoding="utf-8")
    handler.stream.close()  # every write now fails, as on a full disk
    handler.emit(logging.LogRecord("evolve_ray", logging.INFO, "x.py", 1, "m", None, None))
    handler.emit(logging.LogRecord("evolve_ray", logging.INFO, "x.py", 1, "m", None, None))
    assert "Traceback" not in capsys.readouterr().err
    handler.close()  # closing a failed handler raises nothing either
