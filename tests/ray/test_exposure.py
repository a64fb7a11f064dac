"""Nothing exposed: the local cluster's dashboard listens on 127.0.0.1 unless the config says
otherwise and answers nobody without Ray's token; a run writes only inside its run directory
(HOME untouched, the matplotlib cache and vLLM's cache root inside RUN/.cache); secret values in the
environment appear in no log, no config, no report and no file of the run.

Every cluster here is the driver's own (a subprocess), not the test session's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from .cli_process import Driver, cli_env

CONNECT = """
import json, sys
import ray
from evolve_ray.driver import loop
from evolve_ray.config import load_config
loop.connect(load_config(None, ["cluster.num_cpus=1", *sys.argv[2:]]))
print(json.dumps({"webui": ray._private.worker.global_worker.node.address_info["webui_url"]}), flush=True)
sys.stdin.read()  # hold the cluster until the test closes stdin
ray.shutdown()
"""


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize(("sets", "bound"), [([], "127.0.0.1"), (["cluster.dashboard_host=0.0.0.0"], "0.0.0.0")])
def test_dashboard_binds_where_the_config_says_and_requires_the_token(tmp_path: Path, sets, bound) -> None:
    # RAY_ADDRESS names a cluster that is not there: an empty cluster.address starts a local one anyway.
    env = cli_env(RAY_ADDRESS="127.0.0.1:1")
    p = subprocess.Popen(
        [sys.executable, "-c", CONNECT, str(tmp_path), *sets],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        line = p.stdout.readline()
        assert line, "connect failed"
        port = int(json.loads(line)["webui"].rsplit(":", 1)[1])
        ours = {p.pid} | {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        listening = [
            c
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid in ours
        ]
        assert listening and {c.laddr.ip for c in listening} == {bound}
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        url = f"http://127.0.0.1:{port}/api/jobs/"
        assert _get(url) == 401  # Ray's token authentication is on
        assert _get(url, token) == 200
    finally:
        p.stdin.close()
        p.wait(timeout=120)


SECRETS = {
    "WANDB_API_KEY": "wandb-fake-5c1e7a9d",
    "HF_TOKEN": "hf_fakeTokenQ8Zr41",
    "HUGGING_FACE_HUB_TOKEN": "hf_fakeHubToken77Xp",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-fake-pw-3310",
    "OPENAI_API_KEY": "sk-fake-0000aaaa1111",
}


def _files_with(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f}: {n.decode()}" for n in needles if n in data]
    return hits


def test_tiny_run_writes_only_its_run_directory_and_leaks_no_secret(tiny_models, tmp_path: Path) -> None:
    home, run = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    env = cli_env(HOME=str(home), **SECRETS)
    for unset in ("VLLM_CACHE_ROOT", "MPLCONFIGDIR", "XDG_CACHE_HOME", "HF_HOME", "HF_MODULES_CACHE"):
        env.pop(unset, None)
    sets = [
        f"model.policy={tiny_models['policy']}",
        f"model.reward={tiny_models['reward']}",
        "generation.backend=vllm",
        "run.rounds=1",
        "data.prompts_per_round=2",
        "data.eval_prompts=1",
        "generation.turns=1",
        "run.eval_turns=1",
        "training.batch_size=2",
        "cluster.num_cpus=4",
        "cluster.include_dashboard=false",
    ]
    d = Driver(["run", "--out", str(run), *[a for s in sets for a in ("--set", s)]], tmp_path / "driver.log", env)
    try:
        assert d.wait(timeout=900) == 0, d.output()[-3000:]
    finally:
        d.cleanup()
    assert (run / "report.md").is_file()

    # Only inside the run directory: the plot cache too. HOME gets Ray's own token only. (vLLM's
    # cache root is RUN/.cache/vllm, but on CPU the engine no longer writes there: it inspects the
    # model class in its own process, engines/vllm_engine.py; anything it wrote would be there.)
    assert (run / ".cache" / "matplotlib").is_dir()
    written = sorted(str(f.relative_to(home)) for f in home.rglob("*") if f.is_file())
    assert written == [".ray/auth_token"], written

    # No secret in the output, the run directory (config.yaml, report.json/md, parquet, checkpoints)
    # or this cluster's Ray logs (the session directory carries the driver's pid).
    needles = [v.encode() for v in SECRETS.values()]
    assert not [n for n in needles if n in d.log.read_bytes()]
    assert not _files_with(run, needles)
    (session,) = [s for s in Path("/tmp/ray").glob(f"session_*_{d.proc.pid}") if s.is_dir()]
    assert not _files_with(session / "logs", needles)
    assert os.environ.get("WANDB_API_KEY") != SECRETS["WANDB_API_KEY"]  # the test's own env is untouched
