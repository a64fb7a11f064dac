"""What a resume may change: the key-by-key diff of the stored and the new config, the refusals
(one line naming the key), and the record a changing resume leaves in the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evolve_ray.config import dump_yaml, load_config
from evolve_ray.driver.resume_settings import (
    RESUMES_FILE,
    ResumeRefused,
    check_changes,
    config_changes,
    may_change,
    mutable_keys,
    plan_resume,
    record_resume,
    rounds_done,
)
from evolve_ray.errors import UserError

from .cli_helpers import assert_one_line_error, run_cli

MAY_CHANGE = [
    "run.rounds=5",
    "generation.num_generators=2",
    "generation.cpus_per_generator=1",
    "generation.gpus_per_generator=1",
    "generation.max_work_batch=4",
    "scoring.num_scorers=2",
    "scoring.cpus_per_scorer=0.5",
    "scoring.gpus_per_scorer=0.5",
    "data.eval_prompts=8",
    "run.eval_turns=1",
    "run.eval_strategy=direct",
    "run.eval_strategies=[direct,chain]",
    "run.eval_num_samples=2",
    "run.eval_strategies_every_round=true",
    "run.eval_temperatures={vote: 0.5}",
    "run.eval_budget_tokens=100",
    "run.eval_start=false",
    "run.log_level=DEBUG",
    "run.trackers=[tensorboard]",
    "cluster.placement_timeout_s=30",
    "cluster.address=auto",
    "cluster.gpu_memory_gib=80",
]
REFUSED = [
    "model.policy=/elsewhere",
    "model.reward=/elsewhere",
    "data.fresh_per_round=false",
    "data.prompts_per_round=7",
    "data.seed=1",
    "generation.turns=1",
    "generation.temperature=0.3",
    "refinement.template=Q {question} A {answer}",
    "scoring.kind=verifier",
    "selection.rule=consistency",
    "training.lr=0.001",
    "training.num_workers=1",
    "sync.transport=disk",
    "run.unchanged_tolerance=0.01",
]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run directory as the driver leaves it after round 1 of 3 (config.yaml, state.json)."""
    d = tmp_path / "run"
    d.mkdir()
    cfg = load_config(None, [f"run.out={d}", "run.rounds=3", "model.policy=/models/p"])
    (d / "config.yaml").write_text(dump_yaml(cfg))
    (d / "state.json").write_text(json.dumps({"last": {"round": 1, "stage": "evaluate"}}))
    return d


@pytest.mark.parametrize("item", MAY_CHANGE)
def test_settings_of_the_remaining_work_may_change(item: str) -> None:
    base = [
        "run.rounds=3",
        "run.eval_strategies=[vote]",
        "scoring.backend=vllm",
        "training.use_gpu=true",
    ]  # where they apply
    old = load_config(None, base)
    changes = config_changes(old, load_config(None, [*base, item]))
    assert list(changes) == [item.split("=")[0]]
    check_changes(changes, done=2)


def test_what_may_change_is_the_schema_fields_mark() -> None:
    """The list a resume checks against comes from the fields' `resume` metadata (config.py), the
    same that docs/options.md shows; it is the list the project had as MUTABLE_KEYS, plus the
    options added since under run.eval_* and cluster.*."""
    assert mutable_keys() == [
        "data.eval_prompts",
        "generation.num_generators",
        "generation.max_work_batch",
        "generation.cpus_per_generator",
        "generation.gpus_per_generator",
        "scoring.num_scorers",
        "scoring.cpus_per_scorer",
        "scoring.gpus_per_scorer",
        "cluster.address",
        "cluster.num_cpus",
        "cluster.dashboard_host",
        "cluster.include_dashboard",
        "cluster.gpu_memory_gib",
        "cluster.placement_timeout_s",
        "run.rounds",
        "run.eval_strategy",
        "run.eval_turns",
        "run.eval_strategies",
        "run.eval_num_samples",
        "run.eval_temperatures",
        "run.eval_budget_tokens",
        "run.eval_strategies_every_round",
        "run.eval_start",
        "run.trackers",
        "run.log_level",
    ]
    with pytest.raises(ResumeRefused, match=r"\(a resume may change data\.eval_prompts, .*, run\.log_level\)$"):
        check_changes({"training.lr": (1e-5, 1e-4)}, done=0)


@pytest.mark.parametrize("item", REFUSED)
def test_settings_the_files_depend_on_are_refused_naming_the_key(item: str) -> None:
    key = item.split("=")[0]
    old = load_config()
    changes = config_changes(old, load_config(None, [item]))
    assert not may_change(key)
    with pytest.raises(ResumeRefused, match=rf"^{key} cannot change on resume \(it was .*\); start a new run"):
        check_changes(changes, done=0)


def test_a_value_equal_to_the_stored_one_is_no_change() -> None:
    old = load_config(None, ["training.lr=0.001", "run.trackers=[tensorboard]"])
    same = load_config(None, ["training.lr=1e-3", "run.trackers=[tensorboard]", "generation.num_generators=1"])
    assert config_changes(old, same) == {}


def test_run_out_is_where_the_run_is_not_a_setting() -> None:
    assert config_changes(load_config(None, ["run.out=/a"]), load_config(None, ["run.out=/b"])) == {}


@pytest.mark.parametrize(
    ("last", "done"),
    [
        (None, 0),
        ({"round": 0, "stage": "collect"}, 0),
        ({"round": 2, "stage": "train"}, 2),
        ({"round": 2, "stage": "evaluate"}, 3),
    ],
)
def test_rounds_done_counts_rounds_whose_evaluation_finished(last, done) -> None:
    assert rounds_done({"last": last}) == done


def test_fewer_rounds_than_completed_is_refused_and_as_many_is_fine() -> None:
    changes = {"run.rounds": (3, 1)}
    with pytest.raises(ResumeRefused, match=r"^run\.rounds=1 is below the 2 rounds this run already completed$"):
        check_changes(changes, done=2)
    check_changes({"run.rounds": (3, 2)}, done=2)


def test_plan_applies_sets_on_the_stored_config(run: Path) -> None:
    plan = plan_resume(run, None, ["run.rounds=4", "generation.num_generators=2", "model.policy=/models/p"])
    assert plan.cfg.run.rounds == 4 and plan.cfg.generation.num_generators == 2
    assert plan.cfg.model.policy == "/models/p"  # stored, not the default
    assert plan.changes == {"run.rounds": (3, 4), "generation.num_generators": (1, 2)}
    assert plan.state["last"] == {"round": 1, "stage": "evaluate"}


def test_plan_takes_a_config_file_the_same_way(run: Path, tmp_path: Path) -> None:
    f = tmp_path / "more.yaml"
    f.write_text("run:\n  rounds: 6\nmodel:\n  policy: /models/p\n")
    assert plan_resume(run, f).changes == {"run.rounds": (3, 6)}
    f.write_text("training:\n  beta: 0.1\n")
    with pytest.raises(ResumeRefused, match=r"^training\.beta cannot change"):
        plan_resume(run, f)


def test_plan_refuses_below_completed_rounds(run: Path) -> None:
    with pytest.raises(ResumeRefused, match=r"run\.rounds=1 is below the 2 rounds"):
        plan_resume(run, None, ["run.rounds=1"])


def test_setting_run_out_on_resume_is_refused_unless_it_names_the_run(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ResumeRefused, match=r"^run\.out cannot change on resume"):
        plan_resume(run, None, [f"run.out={tmp_path / 'other'}"])
    assert plan_resume(run, None, [f"run.out={run}"]).changes == {}


def test_a_moved_run_lives_where_it_is_resumed(run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(run, moved)
    plan = plan_resume(moved)
    assert plan.cfg.run.out == str(moved.resolve()) and plan.changes == {}
    record_resume(plan)
    assert load_config(moved / "config.yaml").run.out == str(moved.resolve())
    assert str(run) not in (moved / "config.yaml").read_text()
    assert not (moved / RESUMES_FILE).exists()  # a move is not a change of settings


def test_record_writes_the_config_and_appends_one_line_per_changing_resume(run: Path) -> None:
    assert record_resume(plan_resume(run, None, ["run.rounds=4"]), now=1.0)
    assert not record_resume(plan_resume(run, None, ["run.rounds=4"]))  # now stored: no change
    assert record_resume(plan_resume(run, None, ["scoring.num_scorers=2"]), now=2.0)
    cfg = load_config(run / "config.yaml")
    assert cfg.run.rounds == 4 and cfg.scoring.num_scorers == 2
    lines = [json.loads(x) for x in (run / RESUMES_FILE).read_text().splitlines()]
    assert lines == [
        {"time": 1.0, "changes": {"run.rounds": [3, 4]}},
        {"time": 2.0, "changes": {"scoring.num_scorers": [1, 2]}},
    ]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        plan_resume(tmp_path)


def test_cli_refuses_a_changed_policy_in_one_line_before_any_actor(run: Path) -> None:
    before = (run / "config.yaml").read_text()
    r = run_cli("run", "--resume", str(run), "--set", "model.policy=/other")
    line = assert_one_line_error(r, "model.policy cannot change on resume (it was '/models/p'); start a new run")
    assert "Traceback" not in line and (run / "config.yaml").read_text() == before
    assert not (run / "status.json").exists() and not (run / "run.log").exists()  # the driver never started


def test_cli_refuses_out_with_resume(run: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("run", "--resume", str(run), "--out", str(tmp_path / "x")), "--out cannot be used")
