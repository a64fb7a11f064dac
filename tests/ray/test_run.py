"""A tiny run end to end on the session's local Ray cluster with real engines and trainer."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import ray
from datasets import load_dataset
from transformers import AutoModelForCausalLM

from evolve_ray import loop
from evolve_ray.config import load_config
from evolve_ray.export import export
from evolve_ray.report import load_rows

ROUND_KEYS = [
    "gen/tokens_per_s",
    "score/reward_mean",
    "refine/improved_frac",
    "refine/degraded_frac",
    "pairs/count",
    "pairs/margin_mean",
    "train/loss",
    "train/reward_acc",
    "sync/seconds",
    "eval/direct_score",
    "eval/turn_1_score",
    "eval/turn_1_accuracy",
    "time/round_s",
    "time/collect_s",
    "time/train_s",
    # the reviewers' measurements: length per turn, cost, reward model vs the exact verifier
    "gen/turn_0_mean_tokens",
    "gen/tokens",
    "eval/turn_0_mean_tokens",
    "eval/tokens",
    "refine/turn_0_accuracy",
    "score/rm_verifier_agreement",
    "pairs/chosen_wrong_frac",
]


def tiny_cfg(out: Path, tiny_models, *sets: str):
    return load_config(
        None,
        [
            f"run.out={out}",
            f"model.policy={tiny_models['policy']}",
            f"model.reward={tiny_models['reward']}",
            "run.rounds=2",
            "data.prompts_per_round=4",
            "data.eval_prompts=4",
            "generation.turns=2",
            "run.eval_turns=2",
            "training.batch_size=4",
            *sets,
        ],
    )


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tiny_models, tmp_path_factory) -> Path:
    return loop.run(tiny_cfg(tmp_path_factory.mktemp("e2e") / "run", tiny_models))


def test_run_directory_has_every_documented_file(finished_run: Path) -> None:
    for name in ["config.yaml", "state.json", "report.json", "report.md"]:
        assert (finished_run / name).is_file(), name
    for png in ["score_per_round.png", "per_turn.png", "pairs.png", "time_per_stage.png"]:
        assert (finished_run / "plots" / png).stat().st_size > 0
    for r in ("r000", "r001"):
        for name in ["candidates.parquet", "pairs.parquet", "eval.parquet", "metrics.json"]:
            assert (finished_run / "rounds" / r / name).is_file(), f"{r}/{name}"
        assert (finished_run / "checkpoints" / r / "model.safetensors").is_file()
    assert json.loads((finished_run / "state.json").read_text())["last"] == {"round": 1, "stage": "evaluate"}


def test_report_rows_have_documented_finite_keys(finished_run: Path) -> None:
    start, *rows = load_rows(finished_run)
    assert start["round"] == -1 and [r["round"] for r in rows] == [0, 1]
    for row in rows:
        missing = [k for k in ROUND_KEYS if k not in row]
        assert not missing, missing
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert rows[1]["policy/version"] == 2.0


def test_start_row_evaluates_the_starting_policy(finished_run: Path) -> None:
    """Before round 0 the starting policy is evaluated on the same held-out prompts (row -1)."""
    start = load_rows(finished_run)[0]
    assert start["round"] == -1 and start["eval/prompts"] == 4.0
    assert 0.0 <= start["eval/turn_0_accuracy"] <= 1.0 and start["eval/tokens"] > 0
    evals = pd.read_parquet(finished_run / "rounds" / "start" / "eval.parquet")
    assert set(evals["policy_version"]) == {0} and len(evals) == 4 * 3  # 4 prompts x (direct + 2 turns)
    later = pd.read_parquet(finished_run / "rounds" / "r000" / "eval.parquet")
    assert set(evals["question"]) == set(later["question"])


def test_reviewer_measurements_match_the_candidates(finished_run: Path) -> None:
    """rm/verifier agreement, chosen-wrong share and length per turn, recomputed from the files."""
    from evolve_ray.tasks.arith import ArithTask

    row = load_rows(finished_run)[2]  # round 1
    cands = pd.read_parquet(finished_run / "rounds" / "r001" / "candidates.parquet")
    task = ArithTask()
    prompts = {p.id: p for p in task.prompts("round", 8)}  # rounds 0 and 1: 4 fresh prompts each
    correct = pd.Series([task.verify(prompts[p], t) for p, t in zip(cands["prompt_id"], cands["text"], strict=True)])
    assert row["gen/turn_0_mean_tokens"] == pytest.approx(cands[cands["turn"] == 0]["num_tokens"].mean())
    assert row["gen/tokens"] == pytest.approx(cands["num_tokens"].sum())
    assert row["score/rm_verifier_agreement"] == pytest.approx(((cands["score"] > 0) == correct).mean())
    chosen = correct[cands["selection"] == "chosen"]
    assert len(chosen) > 0 and row["pairs/chosen_wrong_frac"] == pytest.approx(1.0 - chosen.mean())


def test_candidates_carry_lineage_scores_and_decisions(finished_run: Path) -> None:
    df = pd.read_parquet(finished_run / "rounds" / "r001" / "candidates.parquet")
    assert len(df) == 4 * 3 and df["id"].is_unique
    assert set(df["policy_version"]) == {1}  # round 1 was generated by the policy trained in round 0
    assert df["score"].notna().all()
    assert set(df["selection"]) <= {"chosen", "rejected", "unused"}


def test_checkpoint_loads_in_transformers(finished_run: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(finished_run / "checkpoints" / "r001")
    assert model.config.model_type == "llama"


def test_export_trl_loads_with_datasets(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    n = export(finished_run, "trl", out)
    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == n > 0
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    alpaca = tmp_path / "outputs.json"
    assert export(finished_run, "alpaca_eval", alpaca) == 4
    assert {"instruction", "output", "generator"} <= set(json.loads(alpaca.read_text())[0])


def test_project_metric_on_the_prometheus_endpoint(finished_run: Path) -> None:
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline, body = time.time() + 60, ""
    while time.time() < deadline:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        if "evolve_ray_pairs_count" in body:
            break
        time.sleep(2)
    assert "evolve_ray_pairs_count" in body


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates_or_gaps(ray_cluster, tiny_models, tmp_path, monkeypatch) -> None:
    cfg = tiny_cfg(tmp_path / "run", tiny_models)
    real_train = loop.train

    def train_then_die(s, r):
        if r == 1:
            raise Interrupt("driver lost between collect and train of round 1")
        return real_train(s, r)

    monkeypatch.setattr(loop, "train", train_then_die)
    with pytest.raises(Interrupt):
        loop.run(cfg)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["last"] == {"round": 1, "stage": "collect"}
    monkeypatch.setattr(loop, "train", real_train)
    loop.resume_run(tmp_path / "run")
    rows = load_rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [-1, 0, 1]
    for r in ("r000", "r001"):
        cands = pd.read_parquet(tmp_path / "run" / "rounds" / r / "candidates.parquet")
        assert cands["id"].is_unique and cands["prompt_id"].nunique() == 4 and len(cands) == 12
        pairs = pd.read_parquet(tmp_path / "run" / "rounds" / r / "pairs.parquet")
        assert pairs["id"].is_unique
    assert (tmp_path / "run" / "checkpoints" / "r001" / "model.safetensors").is_file()


def test_second_run_into_same_directory_is_refused(finished_run: Path, tiny_models) -> None:
    from evolve_ray.errors import UserError

    with pytest.raises(UserError, match="--resume"):
        loop.run(tiny_cfg(finished_run, tiny_models))
