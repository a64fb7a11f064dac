"""A reward model that outputs NaN for some inputs (a NaN written into its saved weights): those
scores are counted (score/invalid_nan) and kept out of selection; the round still trains on the rest
and the report holds only finite numbers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from evolve_ray.driver import loop
from evolve_ray.models.loading import load_tokenizer
from evolve_ray.reporting.report import load_rows

from .test_run import tiny_cfg

POISON = "~"  # any conversation holding this character scores NaN
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say ~hi~ back.", "Is ~ a letter?"]


def nan_reward(reward: Path, out: Path) -> Path:
    """The tiny reward model with the embedding row of POISON set to NaN: the NaN reaches the last
    position through causal attention, so exactly the conversations that contain it score NaN."""
    shutil.copytree(reward, out)
    weights = load_file(out / "model.safetensors")
    token = load_tokenizer(str(out)).convert_tokens_to_ids(POISON)
    weights["model.embed_tokens.weight"][token] = float("nan")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_nan_rewards_are_counted_and_never_selected(ray_cluster, tiny_models, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    cfg = tiny_cfg(
        tmp_path / "run",
        tiny_models,
        f"model.reward={nan_reward(tiny_models['reward'], tmp_path / 'nan-reward')}",
        "run.rounds=1",
        "data.task=file",
        f"data.path={prompts}",
        "data.format=chat",
        f"data.prompts_per_round={len(QUESTIONS)}",
        "data.eval_prompts=0",
        "generation.backend=transformers",
        "generation.temperature=0",
    )
    run = loop.run(cfg)

    cands = pd.read_parquet(run / "rounds" / "r000" / "candidates.parquet")
    question = cands["prompt_id"].map({f"q{i}": q for i, q in enumerate(QUESTIONS)})
    poisoned = question.str.contains(POISON, regex=False) | cands["text"].str.contains(POISON, regex=False)
    assert poisoned.any() and not poisoned.all()
    assert (cands.loc[poisoned, "score_invalid"] == "nan").all() and cands.loc[poisoned, "score"].isna().all()
    clean = cands.loc[~poisoned, "score"]
    assert clean.notna().all() and clean.map(math.isfinite).all()

    (row,) = load_rows(run)  # eval_prompts=0: no start row
    assert row["score/invalid_nan"] == row["score/invalid"] == float(poisoned.sum())
    assert row["pairs/dropped_no_valid_scores"] >= 2  # the two questions holding POISON
    assert math.isfinite(row["score/reward_mean"]) and row["pairs/count"] > 0
    assert "NaN" not in (run / "report.json").read_text()

    pairs = pd.read_parquet(run / "rounds" / "r000" / "pairs.parquet")
    nan_ids = set(cands.loc[poisoned, "id"])
    assert not nan_ids & (set(pairs["chosen_id"]) | set(pairs["rejected_id"]))
    assert pairs["chosen_score"].notna().all() and pairs["rejected_score"].notna().all()
    assert (run / "checkpoints" / "r000" / "model.safetensors").is_file()  # trained on the clean pairs
    assert not torch.isnan(load_file(run / "checkpoints" / "r000" / "model.safetensors")["lm_head.weight"]).any()
