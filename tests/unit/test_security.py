"""Safe defaults: repository code runs only when configured, weights load from safetensors only,
Ray's token authentication is never turned off by the project, secrets never reach the config."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import evolve_ray
from evolve_ray.config import Config, dump_yaml, load_config
from evolve_ray.models.loading import ModelLoadError, check_model_path, load_policy

PACKAGE = Path(evolve_ray.__file__).parent
REPO = PACKAGE.parent

# ----------------------------------------------------------------------------------------------
# trust_remote_code


def test_trust_remote_code_is_off_by_default() -> None:
    assert Config().model.trust_remote_code is False
    assert "trust_remote_code: false" in dump_yaml(load_config())


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def test_no_code_path_hardwires_trust_remote_code() -> None:
    """Every loader on the run path hands trust_remote_code through, and nothing sets it to True."""
    run_path = [*PACKAGE.glob("models/*.py"), *PACKAGE.glob("engines/*.py"), *PACKAGE.glob("train/*.py")]
    run_path += [PACKAGE / "engines" / "scoring.py", PACKAGE / "driver" / "preflight.py", *PACKAGE.glob("actors/*.py")]
    loaders = {"from_pretrained", "LLM", "load_policy", "load_reward", "load_tokenizer", "check_model_path"}
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for call in _calls(path):
            kw = {k.arg: k.value for k in call.keywords}
            value = kw.get("trust_remote_code")
            assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{call.lineno}"
            handed_on = "trust_remote_code" in kw or None in kw  # None: a **kwargs that carries it
            # peft's adapter loader reads adapter_config.json and weights, and runs no repository code.
            peft = isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "PeftModel"
            handed_on = handed_on or peft
            if path in run_path and _name(call) in loaders and not handed_on:
                missing.append(f"{path.relative_to(REPO)}:{call.lineno} {_name(call)}")
    assert not missing, missing


REMOTE_CONFIG = """
import os
from pathlib import Path

from transformers import LlamaConfig

Path(os.environ["EVOLVE_MARKER"]).write_text("repository code ran")


class MarkerConfig(LlamaConfig):
    model_type = "marker-llama"
"""

PROBE = """
import sys
from pathlib import Path
from evolve_ray.config import load_config
from evolve_ray.errors import UserError
from evolve_ray.driver.preflight import resolve_models
policy, reward, run, trust = sys.argv[1:]
cfg = load_config(None, [f"model.policy={policy}", f"model.reward={reward}", f"model.trust_remote_code={trust}"])
try:
    resolve_models(cfg)
    print("loaded")
except UserError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("trust", [False, True])
def test_repository_code_runs_only_when_configured(tmp_path: Path, tiny_models, trust: bool) -> None:
    """A checkpoint whose config names its own Python code (auto_map): with the default config the
    code never runs and the run is refused; with model.trust_remote_code=true it runs."""
    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_models["policy"], model)
    (model / "configuration_marker.py").write_text(REMOTE_CONFIG)
    config = json.loads((model / "config.json").read_text())
    config |= {"model_type": "marker-llama", "auto_map": {"AutoConfig": "configuration_marker.MarkerConfig"}}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "marker"
    env = os.environ | {
        "EVOLVE_MARKER": str(marker),
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),  # transformers copies the code here
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    args = [str(model), str(tiny_models["reward"]), str(tmp_path / "run"), str(trust).lower()]
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if trust:
        assert marker.read_text() == "repository code ran"
    else:
        assert not marker.exists()
        assert r.stdout.startswith("refused: model.policy") and "trust_remote_code" in r.stdout


# ----------------------------------------------------------------------------------------------
# safetensors only


def test_pickle_checkpoint_is_refused(tmp_path: Path, tiny_models) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_models["policy"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights \(pytorch_model\.bin\)"):
        check_model_path(str(pickled), what="model.policy")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_policy(str(pickled))


def test_vllm_engine_loads_safetensors_only() -> None:
    """Hub ids never pass the local check above: the engine itself is told safetensors only."""
    (llm,) = [c for c in _calls(PACKAGE / "engines" / "vllm_engine.py") if _name(c) == "LLM"]
    fmt = {k.arg: k.value for k in llm.keywords}["load_format"]
    assert isinstance(fmt, ast.Constant) and fmt.value == "safetensors"


# ----------------------------------------------------------------------------------------------
# Ray token authentication and secrets


def test_the_project_never_turns_ray_authentication_off() -> None:
    """Tests may set RAY_AUTH_MODE=disabled; the package, jobs and cluster files never do."""
    offenders = []
    for root in (PACKAGE, REPO / "jobs", REPO / "cluster"):
        for path in root.rglob("*"):
            if path.suffix not in {".py", ".yaml", ".yml", ".sh", ".json", ".toml", ".cfg", ".env"}:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if re.search(r"RAY_AUTH_MODE", line) and re.search(r"disabled|off|none", line, re.IGNORECASE):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_secrets_in_the_environment_never_reach_the_resolved_config(monkeypatch) -> None:
    secrets = {"WANDB_API_KEY": "wandb-secret-3141", "HF_TOKEN": "hf_secret_2718", "MLFLOW_TRACKING_TOKEN": "ml-1618"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    text = dump_yaml(load_config(None, ["run.trackers=[wandb]"]))
    assert not [v for v in secrets.values() if v in text]
    assert "trackers:\n  - wandb" in text or "trackers:\n- wandb" in text
