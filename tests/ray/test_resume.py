"""Resuming a finished run with new settings, after moving its directory: one base run (one
round), moved to a new path with the original deleted, resumed through the CLI with one more
round and two generators. It must train that round on its own files, and nothing it recorded may
name the old path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from evolve_ray.cli import main
from evolve_ray.config import load_config
from evolve_ray.driver import loop
from evolve_ray.driver.resume_settings import RESUMES_FILE
from evolve_ray.reporting.report import load_rows

from .test_run import tiny_cfg

# Where the run is now: the move test moves it (the refusal test reads it wherever it is).
WHERE: dict[str, Path] = {}
# Files that record history rather than state: run.log's lines from before the move name the old path.
HISTORY = {"run.log"}


@pytest.fixture(scope="module")
def base_run(ray_cluster, tiny_models, tmp_path_factory) -> Path:
    run = loop.run(tiny_cfg(tmp_path_factory.mktemp("original") / "run", tiny_models, "run.rounds=1"))
    WHERE["run"] = run
    return run


def files_naming(run: Path, needle: str) -> list[str]:
    """Files under `run` (but run.log) whose bytes contain `needle`."""
    return [
        str(p.relative_to(run))
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in HISTORY and needle.encode() in p.read_bytes()
    ]


def test_a_refused_setting_names_the_key_and_starts_nothing(base_run: Path, tiny_models, capsys) -> None:
    run = WHERE["run"]
    status_before = (run / "status.json").read_text()
    assert main(["run", "--resume", str(run), "--set", "run.rounds=2", "--set", "model.policy=/elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("evolve-ray: error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(
        f"evolve-ray: error: model.policy cannot change on resume (it was '{tiny_models['policy']}'); "
        "start a new run (a resume may change data.eval_prompts, generation.num_generators,"
    ), errors[0]
    assert "model.policy," not in errors[0] and "run.rounds" in errors[0]  # the list is the fields marked resume
    assert (run / "status.json").read_text() == status_before  # the driver never started
    assert load_config(run / "config.yaml").run.rounds == 1 and not (run / RESUMES_FILE).exists()


def test_a_moved_run_resumes_on_its_own_files_with_new_settings(base_run: Path, tmp_path_factory, capsys) -> None:
    original = WHERE["run"]
    assert files_naming(original, str(original))  # the base run names itself (config.yaml's run.out at least)
    moved = tmp_path_factory.mktemp("moved") / "relocated"
    round0 = load_rows(original)[1]
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    WHERE["run"] = moved

    args = ["run", "--resume", str(moved), "--set", "run.rounds=2", "--set", "generation.num_generators=2"]
    assert main(args) == 0
    out = capsys.readouterr().out

    rows = load_rows(moved)
    assert [r["round"] for r in rows] == [-1, 0, 1]
    assert rows[2]["policy/version"] == 2.0 and rows[2]["pairs/count"] > 0
    cands = pd.read_parquet(moved / "rounds" / "r001" / "candidates.parquet")
    assert set(cands["policy_version"]) == {1} and cands["prompt_id"].nunique() == 4
    assert (moved / "checkpoints" / "r001" / "model.safetensors").is_file()
    status = json.loads((moved / "status.json").read_text())
    assert status["state"] == "finished" and status["rounds"] == 2 and len(status["generators"]) == 2
    assert rows[1] == round0  # round 0 finished before the resume: its row (time/round_s too) is as it was
    table = [line.split()[0] for line in out.splitlines() if line[:2] in ("st", "0 ", "1 ")]
    assert table == ["start", "0", "1"], out  # the closing table has the new round
    assert "| 1 |" in (moved / "report.md").read_text()

    cfg = load_config(moved / "config.yaml")
    assert cfg.run.rounds == 2 and cfg.generation.num_generators == 2 and cfg.run.out == str(moved)
    (record,) = [json.loads(x) for x in (moved / RESUMES_FILE).read_text().splitlines()]
    assert record["changes"] == {"run.rounds": [1, 2], "generation.num_generators": [1, 2]}
    log = (moved / "run.log").read_text()
    assert "settings changed on resume: generation.num_generators 1 -> 2, run.rounds 1 -> 2" in log

    assert not original.exists()
    assert files_naming(moved, str(original)) == []
