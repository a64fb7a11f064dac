"""Refinement prompts t(x, y_prev): filling the template and fitting it into the context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# Shown in place of the tokens cut out of a previous answer, so the model sees the gap.
TRUNCATION_MARKER = " ... "


@dataclass(frozen=True)
class RefinePrompt:
    """A refinement prompt, or the reason it was not built.

    token_ids is None exactly when skip_reason is set ("too_long" or "question_too_long").
    """

    token_ids: list[int] | None
    user_content: str
    truncated: bool
    skip_reason: str = ""


def refine_user_turn(template: str, question: str, answer: str) -> str:
    """Fill the {question} and {answer} slots of `template`.

    Plain substitution, not str.format, so braces in the texts are safe; the template is split
    on {answer} first so a question that contains the text "{answer}" is not filled twice.

    Args:
        template: text holding {question} and {answer}.
        question: the user prompt x.
        answer: the previous answer y_prev.

    Returns:
        The user turn text.
    """
    return answer.join(part.replace("{question}", question) for part in template.split("{answer}"))


def chat_prompt_ids(tokenizer: Any, user_content: str) -> list[int]:
    """Token ids of one user turn in the tokenizer's chat template, with the assistant cue.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        user_content: the user turn text.

    Returns:
        Plain list of token ids.
    """
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_content}], add_generation_prompt=True, tokenize=True
    )
    # transformers 5 returns a BatchEncoding (a Mapping); older versions a list of ints.
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if len(ids) > 0 and isinstance(ids[0], Sequence):  # a batch of one
        (ids,) = ids
    return [int(i) for i in ids]


def build_refine_prompt(
    tokenizer: Any,
    template: str,
    question: str,
    answer: str,
    *,
    max_prompt_tokens: int,
    on_too_long: Literal["truncate_middle", "skip"],
) -> RefinePrompt:
    """The chat-formatted refinement prompt t(question, answer), fitted to `max_prompt_tokens`.

    Over the limit, "skip" returns skip_reason "too_long"; "truncate_middle" keeps the head and
    tail of the answer's tokens with TRUNCATION_MARKER between them, or returns skip_reason
    "question_too_long" when even an empty answer does not fit.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        template: the refinement template ({question}, {answer}).
        question: the user prompt x.
        answer: the previous answer y_prev.
        max_prompt_tokens: the most prompt tokens allowed.
        on_too_long: "truncate_middle" or "skip".

    Returns:
        A RefinePrompt that says whether it was truncated or skipped.
    """
    content = refine_user_turn(template, question, answer)
    ids = chat_prompt_ids(tokenizer, content)
    if len(ids) <= max_prompt_tokens:
        return RefinePrompt(ids, content, truncated=False)
    if on_too_long == "skip":
        return RefinePrompt(None, content, truncated=False, skip_reason="too_long")
    if on_too_long != "truncate_middle":
        raise ValueError(f"on_too_long: {on_too_long!r} is not one of truncate_middle, skip")
    empty = refine_user_turn(template, question, "")
    if len(chat_prompt_ids(tokenizer, empty)) > max_prompt_tokens:
        return RefinePrompt(None, content, truncated=False, skip_reason="question_too_long")
    return _truncate_middle(
        tokenizer,
        template,
        question,
        answer,
        excess=len(ids) - max_prompt_tokens,
        max_prompt_tokens=max_prompt_tokens,
    )


def _truncate_middle(
    tokenizer: Any, template: str, question: str, answer: str, *, excess: int, max_prompt_tokens: int
) -> RefinePrompt:
    """Cut the middle of `answer` until the prompt fits; the empty answer is known to fit."""
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    marker_len = len(tokenizer.encode(TRUNCATION_MARKER, add_special_tokens=False))
    keep = len(answer_ids) - excess - marker_len
    # Token counts are not additive across a decode/re-encode (merges at the cut), so re-check
    # and shrink by the remaining excess; this usually takes one or two passes.
    while keep > 0:
        head, tail = (keep + 1) // 2, keep // 2
        cut = (
            tokenizer.decode(answer_ids[:head])
            + TRUNCATION_MARKER
            + tokenizer.decode(answer_ids[-tail:] if tail else [])
        )
        content = refine_user_turn(template, question, cut)
        ids = chat_prompt_ids(tokenizer, content)
        if len(ids) <= max_prompt_tokens:
            return RefinePrompt(ids, content, truncated=True)
        keep -= len(ids) - max_prompt_tokens
    for cut in (TRUNCATION_MARKER.strip(), ""):
        content = refine_user_turn(template, question, cut)
        ids = chat_prompt_ids(tokenizer, content)
        if len(ids) <= max_prompt_tokens:
            return RefinePrompt(ids, content, truncated=True)
    raise AssertionError("unreachable: the empty answer was checked to fit")
