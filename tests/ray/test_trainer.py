"""The trainer on a real local Ray cluster: 2 gloo workers, one worker group for the module,
two rounds, weights pushed to a vLLM and a transformers generator."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.config import load_config, replace
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.train.job import TrainerError, TrainerGroup
from tests.pairs import fact_pairs

from .helpers import chosen_logp, greedy_ids, hf_greedy

log = logging.getLogger(__name__)

FACTS = [
    ("2+2=", "4", "5"),
    ("3+3=", "6", "9"),
    ("capital of France?", "Paris", "Rome"),
    ("1+1=", "2", "11"),
    ("color of the sky?", "blue", "green"),
    ("5-3=", "2", "8"),
    ("opposite of hot?", "cold", "warm"),
    ("10/2=", "5", "20"),
]
STEPS = 24  # 8 examples, batch 4, 12 epochs


@pytest.fixture(scope="module")
def cfg(tiny_models, tmp_path_factory):
    return load_config(
        None,
        [
            f"model.policy={tiny_models['policy']}",
            "generation.backend=vllm",
            "training.loss=evolve",
            "training.reference=refresh",
            "training.batch_size=4",
            "training.epochs=12",
            "training.lr=0.001",
            "training.num_workers=2",
            "training.cpus_per_worker=0.5",
            "training.max_failures=0",  # a worker error fails fast (no 20 s restart)
            f"run.out={tmp_path_factory.mktemp('run')}",
        ],
    )


@pytest.fixture(scope="module")
def generators(ray_cluster, cfg):
    hf_cfg = replace(cfg, generation={"backend": "transformers"})
    gens = [
        GeneratorActor.options(num_cpus=0.5).remote(cfg, cfg.model.policy, 0),
        GeneratorActor.options(num_cpus=0.5).remote(hf_cfg, cfg.model.policy, 1),
    ]
    ray.get([g.info.remote() for g in gens])
    return gens


@pytest.fixture(scope="module")
def group(ray_cluster, cfg):
    policy = str(cfg.model.policy)
    g = TrainerGroup(cfg, policy, Path(cfg.run.out), policy)
    g.start()
    yield g
    g.shutdown()


def _timed_round(group: TrainerGroup, cfg, generators, round_: int) -> dict:
    t0 = time.perf_counter()
    metrics = group.train_round(round_, fact_pairs(FACTS, template=cfg.refinement.template, round_=round_), generators)
    log.warning(
        "round %d: %.1f s wall (worker group start %.1f s, train %.2f s, sync %.2f s)",
        round_,
        time.perf_counter() - t0,
        group.startup_seconds(),
        metrics["train/seconds"],
        metrics["sync/seconds"],
    )
    return metrics


@pytest.fixture(scope="module")
def round0(group, cfg, generators) -> dict:
    return _timed_round(group, cfg, generators, 0)


@pytest.fixture(scope="module")
def round1(round0, group, cfg, generators) -> dict:
    return _timed_round(group, cfg, generators, 1)


def _ref_chosen_logp(model_path: str, cfg, tokenizer, round_: int) -> float:
    """Mean log-prob of the direct chosen responses under `model_path`, computed here in-process."""
    return chosen_logp(AutoModelForCausalLM.from_pretrained(model_path), cfg, tokenizer, FACTS, round_)


def test_loss_falls_from_the_reference_point(round0) -> None:
    assert round0["train/steps"] == STEPS and round0["train/examples"] == len(FACTS)
    # Policy == reference at the first step: DPO gives log 2, the refinement and keep terms (0 - 1/2)^2
    # each (alpha = gamma = 1, the defaults).
    assert round0["train/loss_first"] == pytest.approx(math.log(2) + 0.25 + 0.25, abs=1e-4)
    assert round0["train/loss_last"] < 0.6 * round0["train/loss_first"]
    assert round0["train/reward_acc"] > 0.5


def test_ranks_hold_identical_weights_before_and_after_the_round(round0) -> None:
    a, b = round0["train/param_checksums"]  # per rank: (before the first step, after the last)
    assert len(a) == 2 and a == b
    assert a[0] != a[1]  # the round moved the weights


def test_push_reaches_every_generator(round0, generators, cfg, tokenizer) -> None:
    ckpt = str(Path(cfg.run.out) / "checkpoints" / "r000")
    assert ray.get([g.version.remote() for g in generators]) == [1, 1]
    ids = [chat_prompt_ids(tokenizer, q) for q, _, _ in FACTS[:4]]
    want = hf_greedy(ckpt, ids, 8, tokenizer.eos_token_id)
    for g in generators:
        assert greedy_ids(g, ids, 8) == want
    assert want != hf_greedy(str(cfg.model.policy), ids, 8, tokenizer.eos_token_id)  # training changed outputs


def test_reference_is_the_round_start_policy(round0, round1, cfg, tokenizer) -> None:
    """Round 0 scored against the start model and round 1 against r000, although in each round
    the policy trained past it (the reference log-probs were fixed before the first step)."""
    start = _ref_chosen_logp(str(cfg.model.policy), cfg, tokenizer, 0)
    r000 = _ref_chosen_logp(str(Path(cfg.run.out) / "checkpoints" / "r000"), cfg, tokenizer, 1)
    assert round0["train/ref_chosen_logp"] == pytest.approx(start, abs=1e-4)
    assert round1["train/ref_chosen_logp"] == pytest.approx(r000, abs=1e-4)
    assert abs(start - r000) > 0.1


def test_second_round_reuses_the_worker_group(round0, round1, generators) -> None:
    assert len(set(round0["train/worker_pids"])) == 2
    assert round1["train/worker_pids"] == round0["train/worker_pids"]
    assert round1["policy/version"] == 2.0
    assert ray.get([g.version.remote() for g in generators]) == [2, 2]


def test_the_group_starts_no_placement_group_cleaner_and_no_dataset_manager(round0) -> None:
    """Ray Train's cleaner polls the State API; with a stale address file each query blocked and
    every run's end waited 12 s for it. The dataset manager serves datasets this trainer never
    passes (RunTrainer). The controller is there, neither of the two is."""
    classes = [a["ActorClassName"] for a in ray._private.state.actors().values()]
    assert "TrainController" in classes
    assert "PlacementGroupCleaner" not in classes
    assert "DatasetManager" not in classes


def test_checkpoint_loads_with_transformers(round1, cfg) -> None:
    ckpt = Path(cfg.run.out) / "checkpoints" / "r001"
    assert list(ckpt.glob("*.safetensors")) and not list(ckpt.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    before = AutoModelForCausalLM.from_pretrained(Path(cfg.run.out) / "checkpoints" / "r000")
    assert AutoTokenizer.from_pretrained(ckpt).chat_template
    w1, w0 = model.state_dict(), before.state_dict()
    assert w1.keys() == w0.keys() and any(not torch.equal(w1[k], w0[k]) for k in w1)


def test_worker_error_surfaces_as_trainer_error(round1, group, cfg, generators) -> None:
    """Last in the module: the error ends the worker group (max_failures=0)."""
    bad = fact_pairs(FACTS, template=cfg.refinement.template, round_=2)
    with pytest.raises(TrainerError, match="two direct pairs"):
        group.train_round(2, bad + bad[:1], generators)


def test_restarted_group_resumes_from_the_last_checkpoint(ray_cluster, cfg, tokenizer, tmp_path) -> None:
    """A worker killed between rounds: Ray Train restarts the group (FailureConfig), which loads
    r000 and trains round 1 from there. Two worker-group starts: ~1 minute."""
    import os
    import signal

    rcfg = replace(cfg, training={"max_failures": 1, "epochs": 1}, run={"out": str(tmp_path)})
    policy = str(cfg.model.policy)
    g = TrainerGroup(rcfg, policy, tmp_path, policy)
    g.start()
    try:
        m0 = g.train_round(0, fact_pairs(FACTS, template=rcfg.refinement.template, round_=0), [])
        os.kill(m0["train/worker_pids"][1], signal.SIGKILL)
        m1 = g.train_round(1, fact_pairs(FACTS, template=rcfg.refinement.template, round_=1), [])
    finally:
        g.shutdown()
    assert not set(m1["train/worker_pids"]) & set(m0["train/worker_pids"])
    r000 = _ref_chosen_logp(str(tmp_path / "checkpoints" / "r000"), rcfg, tokenizer, 1)
    assert m1["train/ref_chosen_logp"] == pytest.approx(r000, abs=1e-4)  # resumed from r000, not the start
