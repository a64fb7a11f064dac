"""A tiny run end to end on the session's local Ray cluster with real engines and trainer."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import ray
from datasets import load_dataset
from transformers import AutoModelForCausalLM

from evolve_ray.config import load_config
from evolve_ray.driver import loop
from evolve_ray.reporting.export import export
from evolve_ray.reporting.report import load_rows

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
    evaluated = "data.eval_prompts=0" not in sets  # else run.eval_turns has no effect, and is refused
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
            *(["run.eval_turns=2"] if evaluated else []),
            "training.batch_size=4",
            *sets,
        ],
    )


STRATEGIES_COMPARED = ["direct", "parallel", "chain", "vote"]


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tiny_models, tmp_path_factory) -> Path:
    # The weights travel by the disk transport and the reward model runs on vLLM here (the other
    # runs in tests/ray use the object store and transformers), and the run ends with the
    # inference-strategy comparison.
    return loop.run(
        tiny_cfg(
            tmp_path_factory.mktemp("e2e") / "run",
            tiny_models,
            "sync.transport=disk",
            "scoring.backend=vllm",
            f"run.eval_strategies=[{','.join(STRATEGIES_COMPARED)}]",
            "run.eval_num_samples=3",
        )
    )


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


def test_startup_split_has_every_milestone_in_order(finished_run: Path) -> None:
    """RUN/startup.json: the driver's milestones; the trainer group starts after the generators
    are up (it overlaps the start evaluation and the first collect) and is ready before the end."""
    from evolve_ray.driver.timeline import PHASES

    doc = json.loads((finished_run / "startup.json").read_text())
    m = doc["marks"]
    order = ["driver", "cluster", "generators_ready", "trainer_launched", "start_evaluated", "rounds_done", "closed"]
    assert [m[k] for k in order] == sorted(m[k] for k in order)
    assert m["generators_ready"] < m["first_candidate"] < m["rounds_done"]
    assert m["trainer_launched"] < m["trainer_ready"] < m["rounds_done"]
    # "imports" only for the first run this test process drove
    every = {name for name, _, _ in PHASES}
    assert every - {"imports"} <= set(doc["phases_s"]) <= every
    assert all(v > 0 for v in doc["phases_s"].values())


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
    assert {"chosen", "rejected"} <= set(df["selection"])  # the round made pairs (not vacuous above)


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
    every_round = ["run.eval_strategies=[direct]", "run.eval_strategies_every_round=true"]
    cfg = tiny_cfg(tmp_path / "run", tiny_models, *every_round)
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
    assert all(math.isfinite(r["strategy/direct_accuracy"]) for r in rows if r["round"] >= 0)  # compared every round
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


def test_strategy_comparison_in_the_last_round_and_report(finished_run: Path) -> None:
    rows = [r for r in load_rows(finished_run) if r["round"] >= 0]
    assert not any(k.startswith("strategy/") for k in rows[0])  # only at the end of the run by default
    for name in STRATEGIES_COMPARED:
        for q in ("accuracy", "score", "tokens_per_prompt"):
            assert math.isfinite(rows[1][f"strategy/{name}_{q}"]), (name, q)
    # Cost: 3 sampled answers cost more tokens than one greedy answer; vote's 3 chains of 3 turns more still.
    assert rows[1]["strategy/parallel_tokens_per_prompt"] > rows[1]["strategy/direct_tokens_per_prompt"]
    assert rows[1]["strategy/vote_tokens_per_prompt"] > rows[1]["strategy/chain_tokens_per_prompt"]
    md = (finished_run / "report.md").read_text()
    assert "## Inference strategies" in md and "| 1 | vote |" in md
    assert (finished_run / "plots" / "strategies" / "accuracy_vs_tokens.png").stat().st_size > 1000


def test_best_of_n_picks_the_scorers_best(finished_run: Path) -> None:
    df = pd.read_parquet(finished_run / "rounds" / "r001" / "eval_parallel.parquet")
    assert len(df) == 4 * 3 and df["final"].sum() == 4  # 3 answers per prompt, one picked
    for _, group in df.groupby("prompt_id"):
        assert group.loc[group["final"], "score"].iloc[0] == group["score"].max()


def test_eval_cli_vote(finished_run: Path, tiny_models, tmp_path: Path, capsys) -> None:
    from evolve_ray.cli import main
    from evolve_ray.tasks.arith import ArithTask

    args = ["eval", "--model", str(finished_run / "checkpoints" / "r001"), "--out", str(tmp_path / "ev")]
    args += ["--strategy", "vote", "--num-samples", "4", "--turns", "2"]
    args += ["--set", f"model.reward={tiny_models['reward']}", "--set", "data.eval_prompts=4"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("strategy vote "))
    assert re.fullmatch(
        r"strategy vote \(N=4 K=2 temperature=0\.7\): accuracy=[01]\.\d{3} pass@4 \(oracle: the answer key picks\)="
        r"[01]\.\d{3} score=-?\d+\.\d{3} generated tokens/prompt=\d+\.\d prompt tokens/prompt=\d+\.\d",
        line,
    ), line
    df = pd.read_parquet(tmp_path / "ev" / "eval.parquet")
    assert len(df) == 4 * 4 * 3 and df["final"].sum() == 4  # 4 chains x 3 turns per prompt, one pick
    task = ArithTask()
    for _, group in df.groupby("prompt_id"):
        finals = group[group["turn"] == 2]
        answers = [task.extract_answer(t) for t in finals["text"]]
        picked = task.extract_answer(group.loc[group["final"], "text"].iloc[0])
        counts = {a: answers.count(a) for a in answers if a is not None}
        assert picked is None and not counts or counts[picked] == max(counts.values())


# Glossary entries the tiny run above does not write, and what does write each.
WRITTEN_ELSEWHERE = {
    "eval/final_oracle_accuracy": "evolve-ray eval with N > 1 chains (eval.json); a run's rows carry it per strategy",
    "strategy/budget_tokens": "run.eval_budget_tokens > 0",
    "gen/backend_vllm": "the metrics endpoint and trackers, once at the start (not a report row)",
    "gen/skipped_<reason>": "a refinement prompt that does not fit the context",
    "score/invalid_<reason>": "a NaN or infinite score",
    "pairs/dropped_<reason>": "a prompt that gives no pair (a tie, a margin below selection.min_margin, ...)",
    "data/eval_prompts": "Stage 1 (sft.data): RUN/sft's report",
    "data/skipped_<reason>": "Stage 1: a bad row in the preference file",
    "train/inpo_h": "training.loss=inpo",
    "train/nll_direct": "training.loss=sft (Stage 1)",
    "train/nll_refine": "training.loss=sft (Stage 1)",
    "train/skipped": "a round without pairs",
    "train/resumed": "a trainer group restarted after it finished the round",
}


def test_glossary_names_only_keys_a_run_writes(finished_run: Path) -> None:
    """Every glossary entry is a key this run wrote, or one written under another setting or event
    (WRITTEN_ELSEWHERE says which): an entry for a key nothing writes any more fails here."""
    from evolve_ray.reporting.metric_keys import GLOSSARY, explain

    patterns = [p for p, _ in GLOSSARY]
    written = {entry[0] for row in load_rows(finished_run) for k in row if (entry := explain(k))}
    assert set(WRITTEN_ELSEWHERE) <= set(patterns), set(WRITTEN_ELSEWHERE) - set(patterns)
    assert [p for p in patterns if p not in written and p not in WRITTEN_ELSEWHERE] == []


def test_grafana_dashboard_series_are_what_the_run_exports(finished_run: Path, tmp_path: Path) -> None:
    """Every key cluster/grafana_evolve_ray.json plots is one this run reported (turns beyond the
    run's eval_turns by their pattern), under the name it has on the Prometheus endpoint.

    The run's last row is published again through the loop's exporter: Ray drops a gauge's series
    a few seconds after its Python object is gone, and the finished run's exporter is."""
    from evolve_ray.reporting.metric_keys import explain
    from evolve_ray.reporting.metrics_export import MetricsExporter, prometheus_name
    from tests.unit.test_deploy_files import dashboard_targets

    rows = load_rows(finished_run)
    keys = {k for row in rows for k in row}
    patterns = {explain(k) for k in keys}
    targets = [key for key, _ in dashboard_targets()]
    for key in targets:
        assert key in keys or explain(key) in patterns, key
    exporter = MetricsExporter("dashboard-check", [], {}, str(tmp_path))
    exporter.publish(rows[-1], step=len(rows))
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    wanted = {f"\nray_{prometheus_name(k)}{{" for k in targets if k in rows[-1]}
    deadline, missing = time.time() + 60, wanted
    while missing and time.time() < deadline:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        missing = {w for w in wanted if w not in body}
        time.sleep(0 if not missing else 2)
    assert len(wanted) >= 10 and not missing, sorted(missing)


def test_eval_cli_best_of_n_under_the_verifier_is_picked_by_the_reward_model(
    finished_run: Path, tiny_models, tmp_path: Path, capsys
) -> None:
    """The demo's setting (scoring.kind=verifier): the verifier grades, the reward model picks.
    Each pick is the final with the best reward-model score (pick_score), whatever the verifier
    says; pass@N, the answer key's pick, is reported apart; eval.json records N, K, temperature."""
    from evolve_ray.cli import main

    out = tmp_path / "bon"
    args = ["eval", "--model", str(finished_run / "checkpoints" / "r001"), "--out", str(out)]
    args += ["--strategy", "parallel", "--num-samples", "3", "--temperature", "1.0"]
    args += ["--set", "scoring.kind=verifier", "--set", f"model.reward={tiny_models['reward']}"]
    args += ["--set", "data.eval_prompts=4"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("strategy parallel "))
    assert "(best-of-N: picked by the reward model) pass@3 (oracle: the answer key picks)=" in line, line
    df = pd.read_parquet(out / "eval.parquet")
    assert set(df["score"]) <= {0.0, 1.0} and df["pick_score"].notna().all()  # verifier grades, RM scores
    for _, group in df.groupby("prompt_id"):
        assert group.loc[group["final"], "pick_score"].iloc[0] == group["pick_score"].max()
    record = json.loads((out / "eval.json").read_text())
    assert (record["num_samples"], record["turns"], record["temperature"]) == (3, 0, 1.0)
    assert record["picked_by"] == f"reward model {tiny_models['reward']}"
    oracle = df.groupby("prompt_id")["correct"].any().mean()
    assert record["eval/final_oracle_accuracy"] == oracle >= record["eval/final_accuracy"]
