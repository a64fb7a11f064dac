"""`evolve-ray` as a separate driver process with its own local Ray cluster, and every process it
started remembered, so that a test can SIGKILL the driver and still leave nothing behind.

A driver's local cluster lives in the driver's process tree: `ray stop` would kill every Ray
process on the machine (the session's cluster and other users' too), so cleanup goes by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the driver starts its own cluster (loop.connect ignores it anyway)
    # A user's shell: Ray's default (token authentication on for a local cluster, the token in
    # ~/.ray/auth_token), whatever an earlier test in this worker left in os.environ.
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env | extra


class Driver:
    """One `python -m MODULE ARGS` run (the CLI by default), its output in `log`."""

    def __init__(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, module: str = "evolve_ray.cli"
    ) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,  # a pipe, not the log file: a driver under RLIMIT_FSIZE can still print
            stderr=subprocess.STDOUT,
            env=env or cli_env(),
            start_new_session=True,
            cwd=REPO,  # `-m tests.ray...` scripts resolve from the repository root
        )
        self.seen: dict[int, psutil.Process] = {}
        self._copier = threading.Thread(target=self._copy_output, daemon=True)
        self._copier.start()

    def _copy_output(self) -> None:
        # Ray's processes inherit the pipe: it may stay open after the driver exits (orphans).
        with open(self.log, "ab") as f:
            for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
                f.write(chunk)
                f.flush()

    def track(self) -> None:
        """Remember the driver's current descendants (Ray's processes and its workers)."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        deadline = time.time() + timeout
        while self.running() and time.time() < deadline:
            self.track()
            time.sleep(0.5)
        if self.running():
            self.kill()
            raise AssertionError(f"driver still running after {timeout:.0f} s; log: {self.output()[-3000:]}")
        self._copier.join(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the driver alone, as a crash or the OOM killer would."""
        self.track()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def wait_for_exit(self, names: tuple[str, ...], timeout: float) -> list[str]:
        """Wait until no remembered process whose name starts with one of `names` is alive; returns
        the names still alive at the deadline."""
        deadline = time.time() + timeout
        while True:
            left = [p.name() for p in self.survivors() if p.name().startswith(names)]
            if not left or time.time() > deadline:
                return left
            time.sleep(0.2)

    def cleanup(self) -> list[str]:
        """SIGKILL whatever the driver left behind; returns what had to be killed."""
        if self.running():
            self.kill()
        killed = []
        for p in self.survivors():
            try:
                killed.append(p.name())
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self.seen.values()), timeout=10)
        return killed

    def output(self) -> str:
        return self.log.read_text(errors="replace")
