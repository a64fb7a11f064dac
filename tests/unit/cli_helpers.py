"""Run `evolve-ray` in a fresh interpreter and check that a refusal is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable


def run_cli(
    *args: str, preexec_fn: Callable[[], None] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
        timeout=timeout,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, needle: str) -> str:
    """Exit status 2, no traceback, exactly one `evolve-ray: error:` line that contains `needle`,
    and no Ray cluster started (the refusal came before any actor)."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("evolve-ray: error:")]
    assert len(errors) == 1, out[-3000:]
    assert needle in errors[0], errors[0]
    assert r.returncode == 2
    assert "started a local Ray cluster" not in out
    return errors[0]
