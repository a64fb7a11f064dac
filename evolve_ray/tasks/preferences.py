"""An offline preference set for Stage 1 (self-refinement-aware SFT): rows of prompt/chosen/rejected.

One reader for the common shapes, told apart per row by the types of its fields:
- UltraFeedback-binarized: `prompt` a string, `chosen`/`rejected` message lists whose last
  assistant turn is the response;
- TRL's DPO format, conversational (what `evolve-ray export --format trl` writes): `prompt` a
  message list (its first user turn is the prompt), `chosen`/`rejected` assistant message lists;
  or standard: all three strings;
- plain prompt/chosen/rejected strings. Without a `prompt` field, the first user turn of `chosen`.
Rows come from `tasks.files.read_rows` (json/jsonl/parquet/csv/tsv or a hub id); a row that cannot
be used is skipped and counted under one reason, with its line number in the log.

Each row (x, y_w, y_l) becomes the two Stage-1 pairs of docs/method.md: direct (x; y_w; y_l) and
refine (t(x, y_l); y_w; y_l). The valid rows are shuffled with the seed and the last `eval_prompts`
distinct prompts are held out: never trained on (nor is any other row with the same prompt), and
served as the 'eval' split, so the set is also the Task the per-turn evaluation runs on. Pure: no ray.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from evolve_ray.core.refine import refine_user_turn
from evolve_ray.errors import UserError
from evolve_ray.tasks.files import SPLITS, BadRow, _log_skips, _no_valid_rows, _row_id, _text, parse_each, read_rows
from evolve_ray.types import PreferencePair, Prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferenceRow:
    id: str
    question: str
    chosen: str
    rejected: str


def _turn(messages: Any, key: str, role: str, *, last: bool) -> str:
    """The content of the first (or last) `role` turn of a message list."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRow("wrong_type", f"{key!r} must be a string or a list of {{role, content}} objects")
    turns = [m for m in messages if m.get("role") == role]
    if not turns:
        raise BadRow("missing_field", f"no {role} turn in {key!r}")
    return _text(turns[-1] if last else turns[0], "content") or ""


def _response(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if isinstance(value, list):
        return _turn(value, key, "assistant", last=True)
    return _text(row, key) or ""


def _question(row: dict[str, Any]) -> str:
    value = row.get("prompt")
    if isinstance(value, list):
        return _turn(value, "prompt", "user", last=False)
    if value is None and isinstance(row.get("chosen"), list):
        return _turn(row["chosen"], "chosen", "user", last=False)
    return _text(row, "prompt") or ""


def parse_preference(row: Any, n: int) -> PreferenceRow:
    """One row as (id, x, y_w, y_l); raises BadRow when it cannot be used."""
    if not isinstance(row, dict):
        raise BadRow("wrong_type", f"row is {type(row).__name__}, expected an object")
    question, chosen, rejected = _question(row), _response(row, "chosen"), _response(row, "rejected")
    if chosen == rejected:
        raise BadRow("no_preference", "chosen and rejected are the same text")
    row_id = _row_id({"id": row.get("prompt_id", row.get("id"))}, n)
    return PreferenceRow(row_id, question, chosen, rejected)


def sft_pairs(rows: list[PreferenceRow], template: str) -> list[PreferencePair]:
    """The direct and refine pair of each row, in row order (round -1: before any round)."""
    out: list[PreferencePair] = []
    for r in rows:
        for kind, prompt in (("direct", r.question), ("refine", refine_user_turn(template, r.question, r.rejected))):
            out.append(
                PreferencePair(
                    prompt_id=r.id,
                    round=-1,
                    kind=kind,  # type: ignore[arg-type]  # a PairKind literal
                    question=r.question,
                    prompt=prompt,
                    chosen=r.chosen,
                    rejected=r.rejected,
                    chosen_id=f"{r.id}/chosen",
                    rejected_id=f"{r.id}/rejected",
                    chosen_score=None,
                    rejected_score=None,
                    rule="offline",
                    policy_version=0,
                )
            )
    return out


class PreferenceSet:
    """The preference file as Stage 1's training pairs and as a Task (held-out prompts, no verifier).

    Args:
        path: local file or hub dataset id (tasks.files.read_rows).
        eval_prompts: distinct prompts held out for 'eval' (at most all but one).
        seed: shuffle seed of the split.
    """

    name = "preferences"
    verifiable = False

    def __init__(self, path: str, *, eval_prompts: int, seed: int) -> None:
        self.source = path
        raw, unit = read_rows(path)
        valid, failures = parse_each(raw, parse_preference, lambda r: r.id, unit)
        self.skipped: dict[str, int] = dict(Counter(reason for reason, _, _ in failures))
        _log_skips(path, unit, failures, len(valid))
        if not valid:
            raise UserError(_no_valid_rows(path, unit, "prompt/chosen/rejected", failures))
        random.Random(seed).shuffle(valid)
        questions = list(dict.fromkeys(r.question for r in reversed(valid)))  # distinct, last rows first
        k = min(eval_prompts, len(questions) - 1)
        if k < eval_prompts:
            log.warning(
                "%s: only %d distinct prompts; holding out %d for eval, not %d", path, len(questions), k, eval_prompts
            )
        held = set(questions[:k])
        first: dict[str, Prompt] = {}  # one eval prompt per held-out question
        for r in reversed(valid):
            if r.question in held and r.question not in first:
                first[r.question] = Prompt(id=r.id, question=r.question)
        self._eval = list(first.values())
        self.train_rows = [r for r in valid if r.question not in held]

    def pairs(self, template: str, *, max_rows: int = 0) -> list[PreferencePair]:
        """Stage 1's pairs: direct + refine of each training row (the first `max_rows` rows when > 0)."""
        rows = self.train_rows[:max_rows] if max_rows else self.train_rows
        return sft_pairs(rows, template)

    def prompts(self, split: str, n: int, *, offset: int = 0) -> list[Prompt]:
        """The held-out prompts ('eval'); the training rows' prompts for 'train'/'round'."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        pool = self._eval if split == "eval" else [Prompt(id=r.id, question=r.question) for r in self.train_rows]
        return pool[offset : offset + n]

    def extract_answer(self, text: str) -> str | None:
        return None

    def verify(self, prompt: Prompt, text: str) -> bool:
        return False
