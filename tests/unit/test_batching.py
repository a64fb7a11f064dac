"""Pairs -> examples -> padded tensors, truncation, and the data-parallel schedule (no ray)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from evolve_ray.config import TrainingConfig
from evolve_ray.core.refine import chat_prompt_ids
from evolve_ray.train.batching import (
    build_examples,
    collate_term,
    cut_examples,
    encode_sequence,
    group_pairs,
    loss_terms,
    plan_epoch,
    reference_chunks,
)
from tests.pairs import make_pair


def _cfg(**kw: object) -> TrainingConfig:
    return dataclasses.replace(TrainingConfig(), **kw)


def test_loss_terms() -> None:
    assert loss_terms(_cfg(loss="dpo")) == ("direct",)
    assert loss_terms(_cfg(loss="inpo")) == ("direct",)
    assert loss_terms(_cfg(loss="sft")) == ("direct", "refine")
    assert loss_terms(_cfg(loss="evolve", gamma=0.0)) == ("direct", "refine")
    assert loss_terms(_cfg(loss="evolve", gamma=0.5)) == ("direct", "refine", "keep")


def test_grouping_needs_every_term_and_sorts_by_prompt() -> None:
    pairs = [
        make_pair("b", "direct"),
        make_pair("b", "refine"),
        make_pair("a", "refine"),
        make_pair("a", "direct"),
        make_pair("c", "direct"),
    ]
    groups = group_pairs(pairs, ("direct", "refine"))
    assert [g["direct"].prompt_id for g in groups] == ["a", "b"]  # c has no refine pair
    assert [g["direct"].prompt_id for g in group_pairs(pairs, ("direct",))] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="two direct pairs"):
        group_pairs([make_pair("a", "direct"), make_pair("a", "direct")], ("direct",))


def test_masks_mark_exactly_the_response_and_eos(tokenizer) -> None:
    examples = build_examples([make_pair("a", "direct", chosen="4", rejected="five")], tokenizer, _cfg(loss="dpo"))
    prompt = chat_prompt_ids(tokenizer, "What is 2+2?")
    batch = collate_term(examples, "direct", pad_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape == (2, len(prompt) + 5)  # "five" + EOS is the longest row
    eos = tokenizer.eos_token_id
    chosen, rejected = batch.input_ids.tolist()
    assert chosen[: len(prompt)] == prompt and chosen[len(prompt) :] == [
        *tokenizer.encode("4", add_special_tokens=False),
        eos,
        *[tokenizer.pad_token_id] * 3,
    ]
    assert rejected[len(prompt) :] == [*tokenizer.encode("five", add_special_tokens=False), eos]
    assert batch.response_mask.tolist() == [[0] * len(prompt) + [1, 1, 0, 0, 0], [0] * len(prompt) + [1] * 5]
    assert batch.attention_mask.tolist() == [[1] * (len(prompt) + 2) + [0] * 3, [1] * (len(prompt) + 5)]


def test_a_response_cut_at_the_token_cap_is_trained_without_eos(tokenizer) -> None:
    """A response the engine stopped at generation.max_new_tokens is trained as generated: the
    model never ended it, and an EOS after it would teach it to stop mid-answer."""
    pair = dataclasses.replace(make_pair("a", "direct", chosen="4", rejected="five"), rejected_cut=True)
    batch = collate_term(build_examples([pair], tokenizer, _cfg(loss="dpo")), "direct", pad_id=tokenizer.pad_token_id)
    prompt = chat_prompt_ids(tokenizer, "What is 2+2?")
    chosen, rejected = batch.input_ids.tolist()
    assert chosen[len(prompt) : len(prompt) + 2] == [
        *tokenizer.encode("4", add_special_tokens=False),
        tokenizer.eos_token_id,
    ]
    assert rejected[len(prompt) :] == tokenizer.encode("five", add_special_tokens=False)  # 4 tokens, no EOS
    assert batch.response_mask.tolist()[1] == [0] * len(prompt) + [1] * 4


def test_sft_collates_chosen_only(tokenizer) -> None:
    examples = build_examples(
        [make_pair("a", "direct"), make_pair("a", "refine", prompt="fix: five")], tokenizer, _cfg(loss="sft")
    )
    assert set(examples[0].terms) == {"direct", "refine"}
    assert collate_term(examples, "refine", pad_id=0, with_rejected=False).input_ids.shape[0] == 1


def test_truncation_cuts_the_prompt_from_the_left_first() -> None:
    s = encode_sequence(list(range(10)), [100, 101, 102], max_len=8)
    assert s.ids == [5, 6, 7, 8, 9, 100, 101, 102] and s.prompt_len == 5 and s.cut == 5
    s = encode_sequence(list(range(10)), list(range(100, 112)), max_len=8)  # response alone too long
    assert s.ids == [9, *range(100, 107)] and s.prompt_len == 1 and s.cut == 9 + 5
    s = encode_sequence([1, 2], [3], max_len=8)
    assert s.ids == [1, 2, 3] and s.prompt_len == 2 and s.cut == 0


def test_truncated_example_respects_max_len(tokenizer) -> None:
    long = make_pair("a", "direct", prompt="x" * 300, chosen="y" * 20, rejected="z" * 30)
    (ex,) = build_examples([long], tokenizer, _cfg(loss="dpo", max_len=40))
    for seq in (ex.terms["direct"].chosen, ex.terms["direct"].rejected):
        assert len(seq.ids) == 40
        assert seq.ids[-1] == tokenizer.eos_token_id
    assert ex.terms["direct"].rejected.prompt_len == 40 - 31
    short = make_pair("b", "direct")
    assert cut_examples(build_examples([long, short], tokenizer, _cfg(loss="dpo", max_len=40))) == 1


@pytest.mark.parametrize(
    "n,batch_size,grad_accum,world_size", [(10, 4, 1, 2), (7, 3, 2, 2), (5, 8, 1, 3), (1, 2, 2, 2)]
)
def test_every_example_exactly_once_per_epoch(n: int, batch_size: int, grad_accum: int, world_size: int) -> None:
    for epoch in range(2):
        plans = [
            plan_epoch(
                n,
                batch_size=batch_size,
                grad_accum=grad_accum,
                rank=r,
                world_size=world_size,
                seed=3,
                round=1,
                epoch=epoch,
            )
            for r in range(world_size)
        ]
        assert len({len(p) for p in plans}) == 1  # same step count on every rank
        assert all(len(step.micro_batches) == grad_accum for p in plans for step in p)
        seen = Counter(i for p in plans for step in p for mb in step.micro_batches for i in mb)
        assert seen == Counter(range(n))
        for s in range(len(plans[0])):  # global_count is the step's size over all ranks
            total = sum(len(mb) for p in plans for mb in p[s].micro_batches)
            assert all(p[s].global_count == total for p in plans)


def test_shuffle_is_seeded_and_varies_by_epoch() -> None:
    def order(epoch: int, seed: int = 0) -> list[int]:
        return [
            i
            for step in plan_epoch(
                32, batch_size=32, grad_accum=1, rank=0, world_size=1, seed=seed, round=0, epoch=epoch
            )
            for i in step.micro_batches[0]
        ]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)


def test_reference_chunks_cover_all_and_align_across_ranks() -> None:
    for n, micro, ws in [(7, 2, 2), (1, 4, 2), (9, 1, 3), (0, 2, 2)]:
        chunks = [reference_chunks(n, micro_batch=micro, rank=r, world_size=ws) for r in range(ws)]
        assert len({len(c) for c in chunks}) == 1
        assert sorted(i for c in chunks for chunk in c for i in chunk) == list(range(n))
        assert all(len(chunk) <= micro for c in chunks for chunk in c)


def test_collate_pads_right_with_pad_id() -> None:
    from evolve_ray.train.batching import TokenSeq, collate

    b = collate([TokenSeq([5, 6, 7], 1), TokenSeq([8, 9], 1)], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b.response_mask.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert b.input_ids.dtype == torch.long
