"""The two stages as a user drives them: a run stopped inside Stage 1 resumes through both, and a
Stage 1 made with other settings is refused in one line before anything starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from evolve_ray.config import dump_yaml, load_config
from evolve_ray.driver.pipeline import stage1_config
from evolve_ray.driver.smoke import write_preference_file
from evolve_ray.reporting.report import load_rows

from ..unit.cli_helpers import assert_one_line_error, run_cli
from .cli_process import Driver

SMALL = [
    "data.prompts_per_round=8",
    "data.eval_prompts=4",
    "sft.eval_prompts=4",
    "sft.max_rows=16",
    "run.rounds=1",
    "run.eval_turns=1",
    "training.batch_size=4",
]


def _sets(prefs: Path, *extra: str) -> list[str]:
    return [a for s in [f"sft.data={prefs}", *SMALL, *extra] for a in ("--set", s)]


def test_a_stage1_made_with_other_settings_is_refused_in_one_line(tmp_path: Path) -> None:
    prefs = write_preference_file(tmp_path / "prefs.jsonl")
    run = tmp_path / "run"
    made = load_config(None, [f"sft.data={prefs}", *SMALL, "sft.lr=1e-4", f"run.out={run}"])
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "config.yaml").write_text(dump_yaml(stage1_config(made, run / "sft")))
    r = run_cli("run", "--out", str(run), *_sets(prefs, "sft.lr=2e-4"))
    assert_one_line_error(r, "holds a Stage 1 made with training.lr=0.0001, not 0.0002")


def test_a_run_stopped_in_stage1_resumes_through_both_stages(tmp_path: Path) -> None:
    prefs = write_preference_file(tmp_path / "prefs.jsonl")
    run = tmp_path / "run"
    d = Driver(["run", "--out", str(run), *_sets(prefs)], tmp_path / "first.log")
    try:  # stop it (SIGKILL, as a crash would) once Stage 1 has made its pairs
        deadline = time.time() + 600
        state = run / "sft" / "state.json"
        while d.running() and time.time() < deadline:
            d.track()
            if state.is_file() and json.loads(state.read_text())["last"] is not None:
                break
            time.sleep(0.3)
        assert d.running(), d.output()[-3000:]
        d.kill()
    finally:
        d.cleanup()
    assert not (run / "state.json").exists()  # the rounds never began

    d = Driver(["run", "--resume", str(run)], tmp_path / "resume.log")
    try:
        assert d.wait(timeout=900) == 0, d.output()[-3000:]
    finally:
        d.cleanup()
    out = d.output()
    assert "Traceback" not in out
    assert [r["round"] for r in load_rows(run / "sft")] == [-1, 0]
    assert load_rows(run / "sft")[1]["pairs/count"] == 2 * 16  # direct + refine per row
    assert [r["round"] for r in load_rows(run)] == [-1, 0]
    assert f"the rounds start from {run / 'sft' / 'checkpoints' / 'r000'}" in (run / "run.log").read_text()
    assert (run / "checkpoints" / "r000" / "model.safetensors").is_file()
