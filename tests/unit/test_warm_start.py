"""The demo's warm start: Stage-1 data (realistic wrong answers, refine contexts from the config
template), the SFT loop, and the shipped checkpoints (loadable, deterministic, as measured)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from evolve_ray.config import load_config
from evolve_ray.experiments.warmstart.data import (
    ERROR_KINDS,
    _no_carry_sum,
    operands,
    reward_rows,
    reward_triples,
    sft_pairs,
    wrong_answer,
)
from evolve_ray.experiments.warmstart.reward import reward_on_policy_samples
from evolve_ray.experiments.warmstart.spec import WarmStartSpec
from evolve_ray.experiments.warmstart.train import (
    generate,
    own_wrong_answers,
    refinement_probe,
    reward_agreement,
    train_sft,
)
from evolve_ray.models.loading import load_policy, load_reward, load_tokenizer
from evolve_ray.models.tiny import TinySpec, build_policy, build_tokenizer
from evolve_ray.models.warm_start import PARTS, SHIPPED, is_complete
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.types import Prompt

# Measured on the shipped reward model (manifest.json: measured.reward); the test allows a few
# points less so that a rebuild on another CPU (float differences) does not fail it.
RM_MIN_AGREEMENT = 0.88
# The same on the policy's own temperature-1 answers to the round-split validation prompts.
RM_MIN_ROUND_AGREEMENT = 0.85


def _digits_changed(x: int, y: int) -> int:
    a, b = str(x), str(y)
    width = max(len(a), len(b))
    return sum(c != d for c, d in zip(a.zfill(width), b.zfill(width), strict=True))


def test_dropped_carry_by_hand() -> None:
    # 47+38: 7+8=15 -> 5 (carry forgotten), 4+3=7 -> 75; 99+99: 8, 8 -> 88; 12+34 has no carry.
    assert _no_carry_sum(47, 38) == 75
    assert _no_carry_sum(99, 99) == 88
    assert _no_carry_sum(12, 34) == 46 == 12 + 34


def test_wrong_answers_are_wrong_and_look_like_slips() -> None:
    rng = random.Random(0)
    kinds = set()
    for a in range(10, 100, 3):
        for b in (10, 12, 38, 55, 91, 99):
            text, kind = wrong_answer(a, b, rng)
            value = int(text)
            kinds.add(kind)
            assert value != a + b and value >= 0, (a, b, text)
            assert _digits_changed(value, a + b) <= 2, (a, b, text, kind)  # a slip, not a random number
    assert kinds == set(ERROR_KINDS)


def test_sft_pairs_build_refine_contexts_with_the_config_template() -> None:
    cfg = load_config(None, ["refinement.template='Fix it: {question} was {answer}. Now:'"])
    prompts = ArithTask(seed=0).prompts("train", 30)
    built = sft_pairs(prompts, cfg.refinement.template, seed=0)
    assert len(built.pairs) == 60
    for p, direct, refine in zip(prompts, built.pairs[::2], built.pairs[1::2], strict=True):
        assert (direct.kind, direct.prompt, direct.chosen) == ("direct", p.question, p.answer)
        assert refine.kind == "refine" and refine.chosen == p.answer != refine.rejected
        assert refine.prompt == f"Fix it: {p.question} was {refine.rejected}. Now:"
    kept = sft_pairs(prompts, cfg.refinement.template, seed=0, keep_share=1.0)
    assert all(r.prompt == f"Fix it: {r.question} was {r.chosen}. Now:" for r in kept.pairs[1::2])


def test_reward_rows_carry_the_verifier_label() -> None:
    task = ArithTask(seed=0)
    prompts = task.prompts("eval", 20)
    rows = reward_rows(prompts, seed=0)
    by_question = {p.question: p for p in prompts}
    assert len(rows) == 40
    assert all(task.verify(by_question[q], a) == (y == 1.0) for q, a, y in rows)


def test_reward_triples_take_the_policys_own_wrong_answers_as_negatives() -> None:
    """own_share 1: a prompt with own answers gets them as its negatives, in turn (starting over when
    they run out); the others keep their synthetic ones; the correct side is the verifier's."""
    task = ArithTask(seed=0)
    prompts = task.prompts("train", 30)
    own = {p.id: [str(int(p.answer) + 1), str(int(p.answer) + 10), "1" + str(p.answer)] for p in prompts[20:]}
    triples = reward_triples(prompts, seed=0, wrong_per_prompt=4, own_wrong=own, own_share=1.0)
    assert len(triples) == 120
    assert triples[:80] == reward_triples(prompts[:20], seed=0, wrong_per_prompt=4)  # same stream before
    for i, p in enumerate(prompts):
        mine = triples[4 * i : 4 * i + 4]
        assert all(q == p.question and right == p.answer and task.verify(p, right) for q, right, _ in mine)
        assert not any(task.verify(p, wrong) for _, _, wrong in mine)
        if p.id in own:
            assert [w for _, _, w in mine] == own[p.id] + own[p.id][:1]
    assert triples == reward_triples(prompts, seed=0, wrong_per_prompt=4, own_wrong=own, own_share=1.0)


def test_reward_triples_mix_own_and_synthetic_negatives_at_their_share() -> None:
    """own_share 0.5: about half of the negatives of prompts with own answers are theirs, the rest
    realistic synthetic slips; None or an empty dict gives the synthetic-only default."""
    prompts = ArithTask(seed=0).prompts("train", 400)
    own = {p.id: [str(int(p.answer) + 100)] for p in prompts}
    mixed = reward_triples(prompts, seed=3, wrong_per_prompt=2, own_wrong=own, own_share=0.5)
    used = sum(w == own[p.id][0] for p, (_, _, w) in zip([p for p in prompts for _ in (0, 1)], mixed, strict=True))
    assert 0.4 * len(mixed) <= used <= 0.6 * len(mixed), used
    for q, right, wrong in mixed:
        a, b = operands(Prompt(id="x", question=q))
        assert right == str(a + b) != wrong
    default = reward_triples(prompts, seed=3, wrong_per_prompt=2)
    assert default == reward_triples(prompts, seed=3, wrong_per_prompt=2, own_wrong={}, own_share=0.5)
    assert default == reward_triples(prompts, seed=3, wrong_per_prompt=2, own_wrong=None)
    assert mixed == reward_triples(prompts, seed=3, wrong_per_prompt=2, own_wrong=own, own_share=0.5)


def test_sft_lowers_the_loss_and_is_deterministic() -> None:
    torch.set_num_threads(1)
    spec = WarmStartSpec()
    prompts = ArithTask(seed=0).prompts("train", 64)
    pairs = sft_pairs(prompts, spec.template, seed=0).pairs
    cfg = load_config(None, ["training.loss=sft", "training.lr=0.01", "training.batch_size=16", "training.epochs=3"])
    tok = build_tokenizer()
    weights = []
    for _ in range(2):
        model = build_policy(TinySpec(hidden=64, layers=1, heads=2, intermediate=128), tok)
        history = train_sft(model, tok, pairs, cfg.training)
        assert history[-1]["train/loss"] < 0.5 * history[0]["train/loss"]
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ----------------------------------------------------------------------------------------------
# The shipped warm start


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert is_complete(SHIPPED), (
        f"the warm start is missing from {SHIPPED}: python -m evolve_ray.experiments.warmstart.build"
    )
    return json.loads((SHIPPED / "manifest.json").read_text())


def test_shipped_parts_are_small_and_fit_vllm_cpu(manifest: dict) -> None:
    for part in PARTS:
        size = (SHIPPED / part / "model.safetensors").stat().st_size
        assert size < 3 << 20, (part, size)
        cfg = json.loads((SHIPPED / part / "config.json").read_text())
        assert cfg["hidden_size"] // cfg["num_attention_heads"] in {32, 64, 80, 96, 112, 128}
    assert manifest["spec"]["template"] == load_config(None, []).refinement.template


def test_shipped_policy_is_partial_deterministic_and_as_measured(manifest: dict) -> None:
    torch.set_num_threads(1)
    spec = manifest["spec"]
    task = ArithTask(seed=spec["task_seed"])
    prompts = task.prompts("eval", spec["eval_prompts"])
    tok = load_tokenizer(str(SHIPPED / "policy"))
    policy = load_policy(str(SHIPPED / "policy")).eval()
    first = generate(policy, tok, [p.question for p in prompts])
    assert generate(policy, tok, [p.question for p in prompts]) == first
    accuracy = sum(task.verify(p, y) for p, y in zip(prompts, first, strict=True)) / len(prompts)
    assert 0.2 <= accuracy <= 0.85, accuracy  # partial skill: room to improve
    assert accuracy == pytest.approx(manifest["measured"]["policy"]["eval/turn_0_accuracy"], abs=0.02)


def test_shipped_policy_has_learned_the_refinement_turn(manifest: dict) -> None:
    """Shown a correct answer it keeps it (the build's target), and it fixes some of its own errors;
    the direct-only baseline has never learned the turn. Measured again here, as the manifest says."""
    torch.set_num_threads(1)
    spec = manifest["spec"]
    task = ArithTask(seed=spec["task_seed"])
    prompts = task.prompts("eval", spec["eval_prompts"])
    tok = load_tokenizer(str(SHIPPED / "policy"))
    probe = refinement_probe(load_policy(str(SHIPPED / "policy")), tok, task, prompts, spec["template"])
    measured = manifest["measured"]["policy"]
    assert probe["keep_rate"] >= spec["refine"]["target_keep_rate"] - 0.05
    assert probe["fix_rate"] >= 0.25 and probe["break_rate"] <= 0.2
    assert probe["keep_rate"] == pytest.approx(measured["probe/keep_rate"], abs=0.02)
    baseline = refinement_probe(load_policy(str(SHIPPED / "policy_direct_only")), tok, task, prompts, spec["template"])
    assert baseline["keep_rate"] <= 0.05 and baseline["fix_rate"] <= 0.05
    stage = manifest["measured"]["policy"]["stage_1b"]
    assert stage["reached"] and stage["curve"][-1]["direct_accuracy"] >= spec["refine"]["target_direct_accuracy"]


def test_reward_model_agrees_with_the_verifier_on_held_out_data(manifest: dict) -> None:
    torch.set_num_threads(1)
    spec = manifest["spec"]
    prompts = ArithTask(seed=spec["task_seed"]).prompts("eval", spec["eval_prompts"])
    rm = load_reward(str(SHIPPED / "reward"))
    agreement = reward_agreement(
        rm, load_tokenizer(str(SHIPPED / "reward")), reward_rows(prompts, seed=spec["seed"] + 1)
    )
    assert agreement >= RM_MIN_AGREEMENT
    assert agreement == pytest.approx(manifest["measured"]["reward"]["agreement_heldout"], abs=0.02)


def test_shipped_warm_start_is_the_default_recipe(manifest: dict) -> None:
    assert manifest["spec"] == json.loads(json.dumps(dataclasses.asdict(WarmStartSpec())))


def test_reward_model_agrees_with_the_verifier_on_the_policys_own_samples(manifest: dict) -> None:
    """Measured again as the build does: the policy's temperature-1 answers to the evaluation
    prompts and to the round-split validation prompts (the ones settings are chosen on)."""
    torch.set_num_threads(1)
    measured = reward_on_policy_samples(WarmStartSpec(), SHIPPED)
    recorded = manifest["measured"]["reward"]
    for key in ("agreement_policy_samples", "agreement_policy_samples_round", "pair_accuracy_policy_samples_round"):
        assert measured[key] == pytest.approx(recorded[key], abs=0.02), key
    assert measured["agreement_policy_samples_round"] >= RM_MIN_ROUND_AGREEMENT
    assert 0.3 <= measured["policy_samples_correct_round"] <= 0.9  # both kinds of answer are there to judge


def test_own_wrong_answers_replace_synthetic_ones_at_their_share() -> None:
    """own_share 1: every prompt with a known own answer uses it as y_l; the others stay synthetic."""
    prompts = ArithTask(seed=0).prompts("train", 40)
    own = {p.id: str(int(p.answer) + 7) for p in prompts[:20]}
    built = sft_pairs(prompts, WarmStartSpec().template, seed=0, own_wrong=own, own_share=1.0)
    refine = built.pairs[1::2]
    assert [r.rejected for r in refine[:20]] == [own[p.id] for p in prompts[:20]]
    assert built.error_kinds["own"] == 20 and sum(built.error_kinds.values()) == 40
    assert all(r.rejected != r.chosen for r in refine)


def test_own_wrong_answers_gather_distinct_wrong_answers_over_samples() -> None:
    """Sample i is seeded seed + i, so one sample is the first of several; answers are kept once each."""
    torch.set_num_threads(1)
    task, tok = ArithTask(seed=0), build_tokenizer()
    prompts = task.prompts("train", 16)
    model = build_policy(TinySpec(hidden=64, layers=1, heads=2, intermediate=64), tok)
    one = own_wrong_answers(model, tok, task, prompts, 0)
    three = own_wrong_answers(model, tok, task, prompts, 0, samples=3)
    assert one and set(one) <= set(three)
    assert all(three[pid][0] == answers[0] and len(answers) == 1 for pid, answers in one.items())
    by_id = {p.id: p for p in prompts}
    for pid, answers in three.items():
        assert answers and len(set(answers)) == len(answers) <= 3
        assert all(a == a.strip() and not task.verify(by_id[pid], a) for a in answers)


def test_sft_stops_when_the_measured_target_says_so() -> None:
    torch.set_num_threads(1)
    prompts = ArithTask(seed=0).prompts("train", 64)
    pairs = sft_pairs(prompts, WarmStartSpec().template, seed=0).pairs
    cfg = load_config(None, ["training.loss=sft", "training.batch_size=16", "training.epochs=3"]).training
    tok = build_tokenizer()
    model = build_policy(TinySpec(hidden=64, layers=1, heads=2, intermediate=64), tok)
    seen: list[int] = []
    history = train_sft(model, tok, pairs, cfg, should_stop=lambda steps: seen.append(steps) or steps == 5)
    assert len(history) == 5 and seen == [1, 2, 3, 4, 5]  # 3 epochs would be 12 steps


def test_a_partial_rebuild_needs_a_manifest_that_describes_the_kept_parts(tmp_path) -> None:
    """Parts not rebuilt are only kept when a manifest built them with the same recipe."""
    from evolve_ray.experiments.warmstart.build import build_warm_start

    with pytest.raises(SystemExit, match="no manifest describes"):
        build_warm_start(tmp_path, parts=("policy",))
    spec = json.loads((SHIPPED / "manifest.json").read_text())["spec"]
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": spec | {"rm_epochs": 1}, "measured": {}}))
    with pytest.raises(SystemExit, match="reward was built with other rm_epochs"):
        build_warm_start(tmp_path, parts=("policy", "policy_direct_only"))
    # A manifest from before the own-negative fields described a synthetic-only reward model.
    before = {k: v for k, v in spec.items() if not k.startswith("rm_own_")} | {"rm_epochs": 1}
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": before, "measured": {}}))
    with pytest.raises(SystemExit, match="reward was built with other rm_epochs: rebuild"):
        build_warm_start(tmp_path, parts=("policy", "policy_direct_only"))


def test_a_reward_model_that_learns_from_the_policys_answers_is_rebuilt_with_it(tmp_path) -> None:
    """With own negatives the reward part depends on the policy's recipe and on its built weights."""
    from evolve_ray.experiments.warmstart.build import build_warm_start

    own = WarmStartSpec(rm_own_samples=2)
    spec = json.loads(json.dumps(dataclasses.asdict(own)))
    other_refine = spec | {"refine": spec["refine"] | {"lr": 0.5}}
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": other_refine, "measured": {}}))
    with pytest.raises(SystemExit, match="reward was built with other refine"):
        build_warm_start(tmp_path, own, parts=("policy", "policy_direct_only"))
    with pytest.raises(SystemExit, match="policy was built with other refine"):
        build_warm_start(tmp_path, WarmStartSpec(), parts=("reward",))
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": spec, "measured": {}}))
    with pytest.raises(SystemExit, match="rebuild it with the policy"):
        build_warm_start(tmp_path, own, parts=("policy",))


def test_reward_training_triples_harvest_the_shipped_policys_own_wrong_answers() -> None:
    """The build's path for rm_own_samples: the policy in the output directory answers the train
    prompts, and its wrong answers become negatives, counted for the manifest."""
    from evolve_ray.experiments.warmstart.reward import reward_training_triples

    torch.set_num_threads(1)
    spec = dataclasses.replace(WarmStartSpec(), train_prompts=200, rm_own_samples=2, rm_own_share=1.0)
    triples, counts = reward_training_triples(spec, SHIPPED)
    assert counts["triples"] == len(triples) == 200
    assert 0 < counts["own_prompts"] <= counts["own_wrong_answers"] <= 2 * counts["own_prompts"]
    assert counts["own_negatives"] == counts["own_prompts"]  # share 1: every such prompt's negative is its own
    task = ArithTask(seed=spec.task_seed)
    by_question = {p.question: p for p in task.prompts("train", 200)}
    assert all(task.verify(by_question[q], right) and not task.verify(by_question[q], w) for q, right, w in triples)
    assert (triples, counts) == reward_training_triples(spec, SHIPPED)  # seeded
