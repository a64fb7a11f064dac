"""FSDP2 on the CPU in the Ray Train worker group: 2 gloo workers, bf16 compute over float32
master weights, a bf16 checkpoint in and a bf16 checkpoint out, pushed into a bf16 generator."""

from __future__ import annotations

import json
from pathlib import Path

import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.config import load_config
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.models.loading import load_tokenizer
from evolve_ray.train.job import TrainerGroup
from tests.fsdp_case import FACTS, save_bf16_policy
from tests.pairs import fact_pairs

from .helpers import greedy_ids, hf_greedy


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_fsdp_bf16_round_on_cpu_writes_and_pushes_a_bf16_checkpoint(ray_cluster, tmp_path: Path) -> None:
    """One round (2 steps of 4 examples, 2 micro-batches each: gradient accumulation over 2
    ranks) from a bf16 checkpoint, reference=refresh (its frozen pass precedes the steps)."""
    policy = save_bf16_policy(tmp_path / "policy")
    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.policy={policy}",
            "model.dtype=bfloat16",
            "generation.backend=transformers",
            "training.strategy=fsdp",
            "training.bf16=true",
            "training.loss=evolve",
            "training.batch_size=4",
            "training.grad_accum=2",
            "training.epochs=2",
            "training.lr=0.001",
            "training.num_workers=2",
            "training.cpus_per_worker=0.5",
            "training.max_failures=0",
            f"run.out={run}",
        ],
    )
    generator = GeneratorActor.options(num_cpus=0.5).remote(cfg, str(policy), 0)
    group = TrainerGroup(cfg, str(policy), run, str(policy))
    group.start()
    try:
        metrics = group.train_round(0, fact_pairs(FACTS, template=cfg.refinement.template), [generator])
    finally:
        group.shutdown()
    assert metrics["train/steps"] == 2 and metrics["sync/generators_reached"] == 1.0
    for before, after in metrics["train/param_checksums"]:  # per rank: its own shards moved
        assert before != after

    ckpt = run / "checkpoints" / "r000"
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    start, trained = _weights(policy), _weights(ckpt)
    assert trained.keys() == start.keys() and {v.dtype for v in trained.values()} == {torch.bfloat16}
    # Norm weights start at 1.0, where bf16's spacing (2^-8 below 1) exceeds two steps at lr 1e-3;
    # every other tensor moved, the root module's (embeddings, LM head) included.
    unchanged = [k for k in start if "norm" not in k and torch.equal(start[k], trained[k])]
    assert not unchanged, f"tensors the round never moved: {unchanged}"

    # The bf16 push validated and loaded: the generator serves version 1 with the checkpoint's weights.
    assert ray.get(generator.version.remote()) == 1
    tok = load_tokenizer(str(policy))
    ids = [chat_prompt_ids(tok, q) for q, _, _ in FACTS]
    want = hf_greedy(AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).eval(), ids, 8, tok.eos_token_id)
    assert greedy_ids(generator, ids, 8) == want
