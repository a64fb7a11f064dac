"""What a person reads first: the per-round headline table and one line per finished stage.

The headline has, per round, the held-out accuracy (or reward score when the task cannot be
verified) of the direct answer and after each refinement turn, the shares of prompts that turn 1
fixed and broke, the pairs collected and the round's seconds. `demo` and `run` print it when they
end, it heads report.md, and `evolve-ray status` shows it. A round -1 row (an evaluation before
training) reads "start"; a key a row lacks shows "-". Pure: no ray, no vllm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

MAX_COLUMNS = 8  # the widest table a person reads at a glance; wider ones are split
_TURN = re.compile(r"^eval/turn_(\d+)_(accuracy|score)$")


def round_label(round_: int) -> str:
    """Round -1 is the evaluation before any training."""
    return "start" if round_ < 0 else str(round_)


def eval_quantity(rows: Sequence[Mapping[str, Any]]) -> str:
    """'accuracy' when any row has a verifier's per-turn accuracy, else 'score' (reward model)."""
    return "accuracy" if any(_turns(r, "accuracy") for r in rows) else "score"


def _turns(row: Mapping[str, Any], quantity: str) -> list[int]:
    return sorted(int(m.group(1)) for k in row if (m := _TURN.match(k)) and m.group(2) == quantity)


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: '-' for a missing or non-finite value, integers without decimals."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return "-"
        if float(value).is_integer() and abs(value) >= 1:
            return str(int(value))
        return f"{value:.{digits}f}"
    return str(value)


def _shares(row: Mapping[str, Any], quantity: str) -> str:
    prefix = "eval/acc_turn_1" if quantity == "accuracy" else "eval/turn_1"
    up, down = row.get(f"{prefix}_improved_frac"), row.get(f"{prefix}_degraded_frac")
    if up is None and down is None:
        return "-"
    return f"{fmt(up)} / {fmt(down)}"


def headline(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(column names, one list of cells per row) of the headline table, rows in round order."""
    quantity = eval_quantity(rows)
    last_turn = max((t for r in rows for t in _turns(r, quantity)), default=0)
    shares = "turn 1 fixed / broken" if quantity == "accuracy" else "turn 1 improved / degraded"
    names = ["round", f"direct {quantity}", *[f"turn {t}" for t in range(1, last_turn + 1)], shares, "pairs", "s"]
    cells = []
    for r in sorted(rows, key=lambda r: r["round"]):
        turns = [fmt(r.get(f"eval/turn_{t}_{quantity}")) for t in range(last_turn + 1)]
        seconds = r.get("time/round_s")
        cells.append(
            [
                round_label(r["round"]),
                *turns,
                _shares(r, quantity),
                fmt(r.get("pairs/count")),
                "-" if seconds is None else f"{seconds:.0f}",
            ]
        )
    return names, cells


def split_columns(names: list[str], cells: list[list[str]]) -> list[tuple[list, list]]:
    """Split a table wider than MAX_COLUMNS into tables that each repeat the first column."""
    if len(names) <= MAX_COLUMNS:
        return [(names, cells)]
    step = MAX_COLUMNS - 1
    return [
        ([names[0], *names[i : i + step]], [[row[0], *row[i : i + step]] for row in cells])
        for i in range(1, len(names), step)
    ]


def text_table(names: list[str], cells: list[list[str]]) -> str:
    """Columns padded to their widest cell, for a terminal."""
    widths = [max(len(x) for x in col) for col in zip(names, *cells, strict=True)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join(line(row).rstrip() for row in [names, *cells])


def headline_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The headline for the console: a title line, then the table (split when wide)."""
    if not rows:
        return "no round has finished yet"
    names, cells = headline(rows)
    title = f"held-out {eval_quantity(rows)} by refinement turn (turn 0 = the direct answer):"
    return "\n\n".join([title, *(text_table(n, c) for n, c in split_columns(names, cells))])


# ----------------------------------------------------------------------------------------------
# One console line per finished stage


def _turn_values(m: Mapping[str, Any], quantity: str) -> str:
    turns = _turns(m, quantity)
    return " ".join(fmt(m[f"eval/turn_{t}_{quantity}"]) for t in turns)


def stage_line(round_: int, stage: str, m: Mapping[str, Any]) -> str:
    """`round 0 collect: ...` with the stage's key figures ('-' for any that are missing)."""
    head = f"round {round_label(round_)} {stage}:"
    seconds = f"({fmt(m.get(f'time/{stage}_s'), 1)} s)"
    if stage == "collect":
        body = (
            f"{fmt(m.get('gen/prompts'))} prompts, {fmt(m.get('buffer/candidates'))} candidates, "
            f"{fmt(m.get('pairs/count'))} pairs, reward mean {fmt(m.get('score/reward_mean'))}"
        )
    elif stage == "train":
        if m.get("train/skipped"):
            body = f"skipped (no pairs), policy v{fmt(m.get('policy/version'))}"
        else:
            body = (
                f"loss {fmt(m.get('train/loss_first'))} -> {fmt(m.get('train/loss_last'))}, "
                f"reward acc {fmt(m.get('train/reward_acc'))}, push {fmt(m.get('sync/seconds'), 2)} s, "
                f"policy v{fmt(m.get('policy/version'))}"
            )
    elif stage == "evaluate":
        quantity = eval_quantity([m])
        shares = "fixed / broken" if quantity == "accuracy" else "improved / degraded"
        body = f"{quantity} by turn {_turn_values(m, quantity) or '-'}, turn 1 {shares} {_shares(m, quantity)}"
    else:
        body = ""
    return f"{head} {body} {seconds}".replace("  ", " ")
