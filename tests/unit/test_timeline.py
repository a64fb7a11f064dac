"""The start-up split: milestones keep their first time, phases need both ends, the bench's
outside-rounds split adds shutdown to the process's exit."""

from __future__ import annotations

import json

import pytest

from evolve_ray.bench.demo import outside_split
from evolve_ray.driver.timeline import STARTUP_FILE, Timeline, phases, phases_text


def test_marks_keep_their_first_time_and_the_file_follows(tmp_path) -> None:
    t = Timeline(tmp_path, process_start=100.0)
    t.mark("driver", at=104.0)
    t.mark("driver", at=200.0)  # a second mark of the same milestone changes nothing
    t.mark("cluster", at=110.0)
    doc = json.loads((tmp_path / STARTUP_FILE).read_text())
    assert doc["marks"] == {"process": 100.0, "driver": 104.0, "cluster": 110.0}
    assert doc["phases_s"] == {"imports": 4.0, "cluster": 6.0}


def test_a_later_run_in_the_same_process_has_no_imports_phase(tmp_path) -> None:
    t = Timeline(tmp_path, process_start=None)
    t.mark("driver", at=10.0)
    t.mark("cluster", at=10.5)
    assert phases(t.marks) == {"cluster": 0.5}


MARKS = {
    "process": 0.0,
    "driver": 5.0,
    "cluster": 11.0,
    "generators_ready": 30.0,
    "trainer_launched": 30.5,
    "start_evaluated": 34.0,
    "first_candidate": 35.0,
    "trainer_ready": 52.0,
    "rounds_done": 100.0,
    "closed": 103.0,
}


def test_phases_and_their_line() -> None:
    split = phases(MARKS)
    assert split == {
        "imports": 5.0,
        "cluster": 6.0,
        "actors": 19.0,
        "trainer_group": 21.5,
        "start_evaluation": 4.0,
        "first_candidate": 30.0,
        "close": 3.0,
    }
    assert phases_text(split).startswith("imports 5.0 s, cluster 6.0 s, actors 19.0 s, trainer group 21.5 s")


def test_bench_split_measures_shutdown_to_the_process_exit() -> None:
    split = outside_split({"marks": MARKS, "phases_s": phases(MARKS)}, ended=106.5)
    assert list(split) == [
        "imports",
        "cluster",
        "actors",
        "start_evaluation",
        "shutdown to exit",
        "trainer_group (overlapped)",
        "first_candidate (overlapped)",
    ]
    assert split["shutdown to exit"] == pytest.approx(6.5)
    assert sum(split[k] for k in ("imports", "cluster", "actors", "start_evaluation", "shutdown to exit")) == 40.5


def test_a_failed_write_is_a_warning_not_an_error(tmp_path, caplog) -> None:
    """A full disk must not stop the driver's shutdown: the marks stay in memory."""
    blocked = tmp_path / "run"
    blocked.write_text("a file where the run directory should be")  # every write under it fails
    t = Timeline(blocked, process_start=1.0)
    t.mark("driver", at=2.0)
    assert t.marks == {"process": 1.0, "driver": 2.0}
    assert "could not write" in caplog.text


def test_imports_start_when_the_interpreter_reaches_evolve_ray_not_at_process_creation() -> None:
    """`(bash cluster/install.sh && evolve-ray demo)`: the subshell's process, created before the
    install, becomes the demo's (exec). The start-up split must not count the install as imports."""
    import subprocess
    import sys

    code = "import psutil, evolve_ray; print(evolve_ray.IMPORTED_AT - psutil.Process().create_time())"
    r = subprocess.run(
        ["sh", "-c", f"sleep 2 && exec {sys.executable} -c '{code}'"], capture_output=True, text=True, check=True
    )
    assert float(r.stdout) > 1.5  # the 2 s before the exec are not the package's
