"""Refinement prompts: template filling, chat-template round trips, and the too-long rules."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from evolve_ray.config import PAPER_REFINE_TEMPLATE
from evolve_ray.core.refine import TRUNCATION_MARKER, build_refine_prompt, chat_prompt_ids, refine_user_turn
from evolve_ray.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

TEMPLATE = "Improve it.\nQUESTION: {question}\nEXAMPLE RESPONSE: {answer}\nRESPONSE:"


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="module")
def merging_tok() -> PreTrainedTokenizerFast:
    """A byte-level BPE with learned merges: token counts are not additive across a cut."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["the answer is forty two because six times seven", "héllo wörld ... step by step"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>", chat_template=CHAT_TEMPLATE
    )


def _chat(content: str) -> str:
    return f"<|user|>{content}<|end|><|assistant|>"


def test_refine_user_turn_fills_slots_and_keeps_braces() -> None:
    out = refine_user_turn(TEMPLATE, "What is {x}?", "def f(): return {'a': 1} {0} {question}")
    assert out == (
        "Improve it.\nQUESTION: What is {x}?\nEXAMPLE RESPONSE: def f(): return {'a': 1} {0} {question}\nRESPONSE:"
    )


def test_refine_user_turn_does_not_refill_a_question_that_names_a_slot() -> None:
    out = refine_user_turn("Q={question} A={answer}", "say {answer}", "42")
    assert out == "Q=say {answer} A=42"


def test_default_template_has_the_method_layout() -> None:
    out = refine_user_turn(PAPER_REFINE_TEMPLATE, "2+2?", "5")
    assert "QUESTION: 2+2?\nEXAMPLE RESPONSE: 5\nRESPONSE:" in out and "{" not in out


def test_chat_prompt_ids_round_trip(tok: PreTrainedTokenizerFast) -> None:
    ids = chat_prompt_ids(tok, "hi {there} é")
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert tok.decode(ids) == _chat("hi {there} é")
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")


def test_fitting_prompt_is_untouched(tok: PreTrainedTokenizerFast) -> None:
    r = build_refine_prompt(tok, TEMPLATE, "2+2?", "It is {4}.", max_prompt_tokens=200, on_too_long="truncate_middle")
    assert (r.truncated, r.skip_reason) == (False, "")
    assert r.user_content == refine_user_turn(TEMPLATE, "2+2?", "It is {4}.")
    assert r.token_ids is not None and tok.decode(r.token_ids) == _chat(r.user_content)


def test_truncate_middle_keeps_head_and_tail(tok: PreTrainedTokenizerFast) -> None:
    answer = "HEAD-" + "x" * 300 + "-TAIL"
    full = len(chat_prompt_ids(tok, refine_user_turn(TEMPLATE, "q?", answer)))
    r = build_refine_prompt(tok, TEMPLATE, "q?", answer, max_prompt_tokens=full - 100, on_too_long="truncate_middle")
    assert r.truncated and r.skip_reason == "" and r.token_ids is not None
    # One token per byte here, so the cut is exact: the prompt fills the budget.
    assert len(r.token_ids) == full - 100
    assert tok.decode(r.token_ids) == _chat(r.user_content)
    shown = r.user_content.split("EXAMPLE RESPONSE: ")[1].split("\nRESPONSE:")[0]
    assert shown.startswith("HEAD-x") and shown.endswith("x-TAIL") and TRUNCATION_MARKER in shown
    assert len(shown) < len(answer)


def test_skip_mode_says_too_long(tok: PreTrainedTokenizerFast) -> None:
    r = build_refine_prompt(tok, TEMPLATE, "q?", "y" * 300, max_prompt_tokens=100, on_too_long="skip")
    assert (r.token_ids, r.truncated, r.skip_reason) == (None, False, "too_long")


def test_question_too_long_is_skipped_even_when_truncating(tok: PreTrainedTokenizerFast) -> None:
    r = build_refine_prompt(tok, TEMPLATE, "q" * 300, "short", max_prompt_tokens=100, on_too_long="truncate_middle")
    assert (r.token_ids, r.skip_reason) == (None, "question_too_long")


@pytest.mark.parametrize("budget", [40, 47, 55, 70, 90])
def test_truncation_fits_with_merging_tokenizer(merging_tok: PreTrainedTokenizerFast, budget: int) -> None:
    """Merges across the cut and multi-byte characters still end within the budget."""
    answer = "the answer is forty two because six times seven, héllo wörld " * 6
    r = build_refine_prompt(
        merging_tok,
        "Q: {question}\nA: {answer}\nR:",
        "why?",
        answer,
        max_prompt_tokens=budget,
        on_too_long="truncate_middle",
    )
    assert r.truncated and r.token_ids is not None
    assert budget - 3 <= len(r.token_ids) <= budget  # fits, and keeps nearly all it may
    assert r.token_ids == chat_prompt_ids(merging_tok, r.user_content)
    assert r.user_content.startswith("Q: why?\nA: ")


def test_unknown_rule_raises(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="on_too_long"):
        build_refine_prompt(tok, TEMPLATE, "q", "a" * 300, max_prompt_tokens=50, on_too_long="drop")  # type: ignore[arg-type]
