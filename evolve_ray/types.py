"""Records that cross process boundaries: frozen dataclasses of plain values, no tensors.

Every candidate carries its lineage (prompt, chain, turn, parent) and the policy version that
produced it. Pure module: standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

PairKind = Literal["direct", "refine", "keep"]


@dataclass(frozen=True)
class Prompt:
    """One task prompt x, with an optional reference answer for verifiable tasks."""

    id: str
    question: str
    answer: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One generated response y_{chain, turn} and where it came from.

    turn 0 is the direct answer y0 ~ pi(.|x); turn k>0 refines its parent (turn k-1, same chain)
    under the refinement context t(x, parent.text).
    """

    prompt_id: str
    chain: int
    turn: int
    text: str
    parent_id: str | None
    policy_version: int
    round: int
    strategy: str
    num_tokens: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0  # tokens of the prompt it was generated from (x, or t(x, parent) for a refinement)

    @property
    def id(self) -> str:
        return candidate_id(self.prompt_id, self.chain, self.turn)


def candidate_id(prompt_id: str, chain: int, turn: int) -> str:
    return f"{prompt_id}/c{chain}/t{turn}"


@dataclass(frozen=True)
class Score:
    """A scorer's verdict on one candidate. `value` is None when the score was not finite."""

    candidate_id: str
    value: float | None
    invalid_reason: str = ""

    @staticmethod
    def of(candidate_id: str, raw: float) -> Score:
        if math.isnan(raw):
            return Score(candidate_id, None, "nan")
        if math.isinf(raw):
            return Score(candidate_id, None, "inf")
        return Score(candidate_id, float(raw))


@dataclass(frozen=True)
class ScoredCandidate:
    candidate: Candidate
    score: float | None
    invalid_reason: str = ""


@dataclass(frozen=True)
class PreferencePair:
    """One training pair: under the user turn `prompt`, `chosen` is preferred to `rejected`.

    kind=direct: prompt is the question x. kind=refine: prompt is t(x, y_l) (the rejected answer
    shown as the example). kind=keep: prompt is t(x, y_w). chosen_cut / rejected_cut: that response
    stopped at generation.max_new_tokens, not at EOS: it is trained as generated, without an EOS.
    """

    prompt_id: str
    round: int
    kind: PairKind
    question: str
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    chosen_score: float | None
    rejected_score: float | None
    rule: str
    policy_version: int
    chosen_cut: bool = False
    rejected_cut: bool = False

    @property
    def id(self) -> str:
        return f"{self.prompt_id}/{self.kind}"


def to_row(record: Any) -> dict[str, Any]:
    """A flat dict for parquet/JSON, with derived ids included."""
    row = dataclasses.asdict(record)
    if hasattr(record, "id"):
        row["id"] = record.id
    return row


def from_row(cls: type, row: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})
