"""The command's quick exit (cli.exit_quickly): no Python teardown of the heavy modules, yet the
exit status, buffered output and exit hooks are all there, and a running non-daemon thread is
still waited for. Each case is a fresh interpreter whose output is a pipe (block-buffered, as
under a job runner or a test's subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PRELUDE = """
import atexit, threading, time
from evolve_ray.cli import exit_quickly
atexit.register(lambda: print("exit hook ran"))
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("rc", [0, 2, 130])
def test_status_buffered_output_and_exit_hooks_survive(rc: int) -> None:
    r = _run(
        f'print("the table", end=""); print("a warning", file=__import__("sys").stderr, end=""); exit_quickly({rc})'
    )
    assert r.returncode == rc
    assert r.stdout == "the tableexit hook ran\n"  # buffered output flushed after the hooks
    assert r.stderr == "a warning"


def test_a_running_non_daemon_thread_is_waited_for() -> None:
    r = _run(
        'threading.Thread(target=lambda: (time.sleep(1.0), print("thread done", flush=True))).start()\nexit_quickly(3)'
    )
    assert r.returncode == 3
    assert r.stdout.splitlines() == ["thread done", "exit hook ran"]
