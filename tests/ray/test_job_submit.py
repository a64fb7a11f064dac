"""`ray job submit` of the demo config against a separate `ray start --head` cluster, with Ray's
token authentication left on (the CLI then needs RAY_AUTH_MODE=token: docs/platform.md), and
`evolve-ray scale` reaching the submitted run's driver by the cluster address and the run's name."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .address_file import address_file_kept

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_start_cluster():
    """`ray start --head --block` in its own process group, shared by the module's tests. Killing
    that group stops this cluster only: `ray stop` would kill every Ray process on the machine, the
    session's cluster included. `ray start` records its address in the machine's address file,
    which only `ray stop` resets: the file is put back as it was (address_file_kept)."""
    with address_file_kept():
        yield from _ray_start_head()


def _ray_start_head() -> Iterator[tuple[dict[str, str], str, str]]:
    env = os.environ | {"RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    gcs, dash = _free_port(), _free_port()
    # Every port Ray would otherwise take at a fixed default is chosen free: the test session's own
    # cluster already holds the dashboard agent's 52365, and an agent that cannot bind leaves the
    # head with "No available agent to submit job".
    ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    head = subprocess.Popen(
        [
            BIN / "ray",
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            "--disable-usage-stats",
            *ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_dashboard(f"http://127.0.0.1:{dash}", head)
        yield env, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}"
    finally:
        # Killed outright: its graceful stop (SIGTERM) took 33 s and then ran into a 60 s wait.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without the token): it is up
        except OSError:
            time.sleep(1)
    raise TimeoutError("the dashboard did not come up")


def _scale_when_started(run: Path, gcs: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`evolve-ray scale RUN_NAME --address GCS --generators 2` once the driver has started its
    control actor (RUN/control.json appears), as from a machine without the run directory."""
    deadline = time.time() + timeout
    while not (run / "control.json").exists():
        assert time.time() < deadline, "the submitted run never started its control actor"
        time.sleep(0.5)
    return subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "scale", run.name, "--address", gcs, "--generators", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ray_job_submit_runs_the_demo_config(ray_start_cluster, tiny_models, tmp_path) -> None:
    env, dashboard, gcs = ray_start_cluster
    out = tmp_path / "job-run"
    cmd = [
        BIN / "ray",
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        str(ROOT),
        "--",
        "python",
        "jobs/run_evolve.py",
        "--config",
        "jobs/configs/demo.yaml",
        "--out",
        str(out),
        "--set",
        "run.rounds=1",
        "--set",
        "data.prompts_per_round=4",
        "--set",
        "data.eval_prompts=2",
        "--set",
        f"model.policy={tiny_models['policy']}",
        "--set",
        f"model.reward={tiny_models['reward']}",
        "--set",  # the demo's pairs come from the verifier: a random tiny policy gets no sum right, so
        "scoring.kind=reward_model",  # no pair and no checkpoint; the random reward model ranks them
    ]
    job_id = f"evolve-ray-test-{os.getpid()}"
    cmd[3:3] = ["--submission-id", job_id, "--no-wait"]  # right after `submit`
    deadline = time.time() + 300  # a loaded machine can take minutes to start the job agent
    while True:  # right after `ray start` the dashboard agent may not accept jobs yet
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in r.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    scaled = _scale_when_started(out, gcs, env)
    ray_job = [BIN / "ray", "job"]
    logs = subprocess.run(
        [*ray_job, "logs", "--address", dashboard, "--follow", job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    status = subprocess.run(
        [*ray_job, "status", "--address", dashboard, job_id], env=env, capture_output=True, text=True, timeout=120
    )
    assert f"Job {job_id!r} succeeded" in status.stdout + status.stderr, (
        logs.stdout[-3000:] + status.stdout + status.stderr
    )
    assert scaled.returncode == 0 and "2 generator(s)" in scaled.stdout, scaled.stderr
    assert "scaled up: generator 1 starts" in (out / "run.log").read_text()  # the driver took the request
    rows = json.loads((out / "report.json").read_text())["rounds"]
    assert [row["round"] for row in rows] == [-1, 0]  # -1: the start row
    assert (out / "checkpoints" / "r000" / "model.safetensors").is_file()


def test_dashboard_refuses_requests_without_the_token(ray_start_cluster) -> None:
    import urllib.error
    import urllib.request

    _, dashboard, _ = ray_start_cluster
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10)
    assert e.value.code in (401, 403)
