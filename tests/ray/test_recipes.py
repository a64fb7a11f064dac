"""Every shipped recipe at toy size, through the CLI as a user runs it (`--smoke`): both stages where
it has two, `evolve-ray sft` then `evolve-ray run` on the same run directory.

What the smoke may change is fixed here (sizes, counts, devices, the models and data files); every
other setting must reach the run as the recipe has it: for the 8-GPU recipe that is FSDP with
bf16 compute (on CPU through gloo), a bf16 checkpoint, the disk push, the vLLM reward-model scorer
over a Llama-3-style model whose pad token is its EOS, parallel_chain N=4 K=3, rule=reward, the
paper's refinement template, cosine with warm-up and gradient accumulation. Its LoRA variant trains
adapters under DDP: each checkpoint is a float32 PEFT adapter, and Stage 2 starts from Stage 1's
adapter merged into the base in bf16 (RUN/sft/merged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from evolve_ray.config import PAPER_REFINE_TEMPLATE, load_config, read_yaml
from evolve_ray.driver.resume_settings import config_changes
from evolve_ray.reporting.report import load_rows

from .cli_process import REPO, Driver

RECIPES = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
# The keys --smoke may change (smoke.py); anything else that differs is a bug.
SHRUNK = (
    "model.policy",
    "model.reward",
    "model.tokenizer",
    "model.max_model_len",
    "data.path",
    "data.eval_path",
    "data.prompts_per_round",
    "data.eval_prompts",
    "sft.data",
    "sft.eval_prompts",
    "sft.max_rows",
    "generation.num_generators",
    "generation.cpus_per_generator",
    "generation.gpus_per_generator",
    "generation.tensor_parallel_size",
    "generation.max_new_tokens",
    "generation.kv_cache_mib",
    "generation.enforce_eager",
    "scoring.num_scorers",
    "scoring.cpus_per_scorer",
    "scoring.gpus_per_scorer",
    "training.num_workers",
    "training.cpus_per_worker",
    "training.use_gpu",
    "training.batch_size",
    "training.max_len",
    "training.warmup_steps",
    "cluster.address",
    "cluster.gpu_memory_gib",
    "run.rounds",
    "run.eval_num_samples",
)


def _cli(args: list[str], log: Path, timeout: float = 900) -> str:
    d = Driver(args, log)
    try:
        rc = d.wait(timeout=timeout)
    finally:
        d.cleanup()
    out = d.output()
    assert rc == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    return out


def _dtypes(checkpoint: Path) -> set[str]:
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def _adapter_dtypes(checkpoint: Path) -> set[str]:
    assert sorted(p.name for p in checkpoint.glob("*.safetensors")) == ["adapter_model.safetensors"]
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def _tensor(checkpoint: Path, name: str):
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        return f.get_tensor(name)


def _assert_per_turn_rows(run: Path, turns: int) -> list[dict]:
    rows = load_rows(run)
    assert [r["round"] for r in rows] == [-1, 0], rows
    for r in rows:
        for t in range(turns + 1):
            assert f"eval/turn_{t}_score" in r, sorted(r)
    return rows


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_smoke_runs_every_stage_with_the_recipes_settings(recipe: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(recipe)
    logs = []
    if cfg.sft.data:  # Stage 1 alone, then `run` continues from it
        out = _cli(["sft", "--config", str(recipe), "--smoke", "--out", str(run)], tmp_path / "sft.log")
        assert "held-out score by refinement turn" in out and "Stage 1 checkpoint:" in out
        logs.append(out)
    out = _cli(["run", "--config", str(recipe), "--smoke", "--out", str(run)], tmp_path / "run.log")
    assert "held-out" in out and "by refinement turn" in out
    stored = load_config(None, base=read_yaml(run / "config.yaml"))
    changed = set(config_changes(cfg, stored))
    assert changed <= set(SHRUNK), changed - set(SHRUNK)
    assert stored.run.rounds == 1 and stored.training.use_gpu is False
    _assert_per_turn_rows(run, stored.run.eval_turns)
    if not cfg.sft.data:
        return

    # Stage 1: trained on the preference file, evaluated per turn before and after, checkpoint in bf16.
    sft_rows = _assert_per_turn_rows(run / "sft", stored.run.eval_turns)
    assert sft_rows[1]["pairs/count"] == 2 * stored.sft.max_rows  # direct + refine per row
    stage1 = run / "sft" / "checkpoints" / "r000"
    assert "Stage 1 already done" in out  # `run` reused what `sft` made
    if stored.training.lora.rank:  # adapters in fp32; Stage 2 starts from Stage 1's merged into the base
        assert _adapter_dtypes(stage1) == {"F32"} and _adapter_dtypes(run / "checkpoints" / "r000") == {"F32"}
        stage1 = run / "sft" / "merged"
        assert (
            json.loads((run / "checkpoints" / "r000" / "adapter_config.json").read_text())["base_model_name_or_path"]
            == "../../sft/merged"
        )
    else:
        assert _dtypes(run / "checkpoints" / "r000") == {"BF16"}
    assert _dtypes(stage1) == {"BF16"}
    start = Path(stored.model.policy)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not _tensor(start, name).equal(_tensor(stage1, name)), "Stage 1 did not change the policy"

    # Stage 2 as the recipe has it: N=4 chains of K=3 refinements, pairs by the reward model.
    assert stored.generation.strategy == "parallel_chain" and stored.refinement.template == PAPER_REFINE_TEMPLATE
    strategy = "ddp" if stored.training.lora.rank else "fsdp"  # LoRA: only the adapter's gradients to all-reduce
    assert (stored.training.strategy, stored.training.bf16, stored.sync.transport) == (strategy, True, "disk")
    assert (stored.scoring.backend, stored.selection.rule, stored.training.lr_schedule) == ("vllm", "reward", "cosine")
    import pandas as pd

    cands = pd.read_parquet(run / "rounds" / "r000" / "candidates.parquet")
    assert sorted(cands["chain"].unique()) == [0, 1, 2, 3] and sorted(cands["turn"].unique()) == [0, 1, 2, 3]
    metrics = json.loads((run / "rounds" / "r000" / "metrics.json").read_text())
    assert metrics["pairs/count"] > 0 and metrics["train/steps"] > 0 and metrics["train/lr"] > 0
    assert metrics["sync/generators_reached"] == 1  # the disk push reached the generator
