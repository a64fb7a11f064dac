"""Prompts read from a file (json array, jsonl, parquet, csv, tsv) or a hub dataset, bad rows skipped and counted.

Row formats: chat (a `prompt` string, or `messages` whose first user turn is the prompt), alpaca
(instruction + optional input; `output` is a reference, not checkable), gsm8k (question + an
answer ending in '#### <number>'; verifiable), columns (named prompt/answer columns; verifiable
when an answer column is named), auto (picked from the columns present: `prompt` beside `answer`
reads as columns with that answer checked, never as chat with the answer dropped; so do the
columns data.prompt_column and data.answer_column name, and a named column that the detected
format would not read is refused).

A row that cannot become a prompt is skipped and counted under one reason (`SKIP_REASONS`), with
its line number in the log, so one bad line never costs the whole file. JSON is parsed here
rather than by `datasets` for that reason; parquet, csv and tsv files and hub ids go through `datasets`
(csv/tsv: the first line names the columns, so row n is line n + 1), whose Arrow cache goes to a
temporary directory removed once the rows are read, not ~/.cache (a run writes only its run
directory), unless HF_DATASETS_CACHE names a place. A hub dataset's files are downloaded to the
Hugging Face hub cache, as hub models are.

Splits: the valid rows are shuffled with the seed; the last `eval_prompts` form 'eval', the rest
serve 'train' and 'round' in that order, wrapping around when exhausted. Pure module: no ray.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from evolve_ray.errors import UserError
from evolve_ray.tasks.numeric import extract_final_number, numbers_equal
from evolve_ray.types import Prompt

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMATS = ("chat", "alpaca", "gsm8k", "columns")
SPLITS = ("train", "round", "eval")
SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv")
_DATASETS_BUILDERS = {".parquet": ("parquet", {}), ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"})}
SKIP_REASONS = (
    "invalid_json",
    "non_utf8",
    "missing_field",
    "empty_text",
    "wrong_type",
    "bad_answer",  # a verifiable format whose reference answer holds no number
    "duplicate_id",
)
_LOGGED_PER_REASON = 3


class BadRow(Exception):
    """Why one row was skipped: `reason` is its counter key, the message says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# Reading: (line number, row dict | BadRow) pairs, whatever the source


def _has_lone_surrogate(value: Any) -> bool:
    """True when a string holds a byte that was not UTF-8 (decoded with surrogateescape)."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


def _read_jsonl(data: bytes) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    for n, raw in enumerate(data.splitlines(), 1):  # bytes.splitlines: \n, \r, \r\n only
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            rows.append((n, BadRow("non_utf8", f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8")))
            continue
        try:
            rows.append((n, json.loads(text)))
        except json.JSONDecodeError as e:
            rows.append((n, BadRow("invalid_json", f"{e.msg} at column {e.colno}")))
    return rows


def _read_json_array(data: bytes, source: str) -> list[tuple[int, Any]]:
    # surrogateescape keeps a stray byte inside one string from failing the whole array.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(items, list):
        raise UserError(f"{source}: expected a JSON array of objects (or one JSON object per line)")
    return [
        (n, BadRow("non_utf8", "holds bytes that are not UTF-8") if _has_lone_surrogate(item) else item)
        for n, item in enumerate(items, 1)
    ]


def _load_with_datasets(source: str, split: str = "train", **kwargs: Any) -> list[tuple[int, Any]]:
    import datasets  # lazy: a second of import time that arith runs never need

    if "HF_DATASETS_CACHE" in os.environ:  # the user chose where datasets keeps its cache
        return [(n, row) for n, row in enumerate(datasets.load_dataset(source, split=split, **kwargs), 1)]
    with tempfile.TemporaryDirectory(prefix="evolve-ray-datasets-") as cache:
        ds = datasets.load_dataset(source, split=split, cache_dir=cache, **kwargs)
        return [(n, row) for n, row in enumerate(ds, 1)]


def read_rows(path: str) -> tuple[list[tuple[int, Any]], str]:
    """The raw rows of `path` and the unit their numbers count ('line' for jsonl, else 'row').

    `path` is a local .json/.jsonl/.parquet/.csv/.tsv file, or else a hub dataset id, optionally
    "owner/name:config" and "@split" ("HuggingFaceH4/ultrafeedback_binarized@train_prefs"); the
    'train' split is read unless a split is named.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"data.path {path}: is a directory; give a {'/'.join(SUFFIXES)} file")
    if p.is_file():
        if p.suffix not in SUFFIXES:
            raise UserError(f"data.path {path}: unsupported file type {p.suffix!r}; use {', '.join(SUFFIXES)}")
        if p.suffix in _DATASETS_BUILDERS:
            builder, kwargs = _DATASETS_BUILDERS[p.suffix]
            try:
                rows = _load_with_datasets(builder, data_files=str(p), **kwargs)
            except Exception as e:  # arrow/datasets errors have no common base; any is a bad file
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UserError(f"data.path {path}: not a readable {p.suffix[1:]} file: {first}") from None
            if builder == "csv":  # the header is line 1
                return [(n + 1, row) for n, row in rows], "line"
            return rows, "row"
        data = p.read_bytes()
        if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            return _read_json_array(data, path), "row"
        return _read_jsonl(data), "line"  # a .json file of one object per line reads as jsonl
    if p.suffix in SUFFIXES or path.startswith((".", "/", "~")):
        raise UserError(f"data file not found: {path}")
    dataset, _, split = path.partition("@")
    name, _, config = dataset.partition(":")
    try:
        return _load_with_datasets(name, split=split or "train", name=config or None), "row"
    except Exception as e:  # offline, unknown id, missing config...: all mean "cannot use this"
        raise UserError(
            f"data.path {path}: no such local file, and loading it as a hub dataset failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Parsing: one row -> (question, answer), or BadRow


def detect_format(columns: set[str], prompt_column: str, answer_column: str = "") -> str:
    """The format implied by the column names present (see the module docstring); the columns a
    user named (data.prompt_column and data.answer_column) both present make it `columns`."""
    if answer_column and {prompt_column, answer_column} <= columns:
        return "columns"
    if {"question", "answer"} <= columns:
        return "gsm8k"
    if "instruction" in columns:
        return "alpaca"
    if {prompt_column, "answer"} <= columns:  # a reference answer to check, not to drop as chat would
        return "columns"
    if "prompt" in columns or "messages" in columns:
        return "chat"
    if prompt_column in columns:
        return "columns"
    raise UserError(
        f"cannot detect the data format from columns {sorted(columns)}; set data.format to one of "
        f"{', '.join(FORMATS)} (columns needs data.prompt_column)"
    )


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise BadRow("missing_field", f"no {key!r} field")
        return None
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"{key!r} is {type(value).__name__}, expected a string")
    value = value.strip()
    if required and not value:
        raise BadRow("empty_text", f"{key!r} is empty")
    return value


def _chat_prompt(row: dict[str, Any]) -> str:
    if row.get("prompt") is not None or "messages" not in row:
        return _text(row, "prompt") or ""
    messages = row["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRow("wrong_type", "'messages' must be a list of {role, content} objects")
    for m in messages:
        if m.get("role") == "user":
            return _text(m, "content") or ""
    raise BadRow("missing_field", "no user turn in 'messages'")


def _final_number(value: Any, key: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"{key!r} is {type(value).__name__}, expected a string or number")
    number = extract_final_number(value)
    if number is None:
        raise BadRow("bad_answer", f"{key!r} holds no number: {value[:40]!r}")
    return number


def parse_row(row: Any, fmt: str, prompt_column: str, answer_column: str) -> tuple[str, str | None]:
    """(question, reference answer) of one row; raises BadRow when the row cannot be used."""
    if not isinstance(row, dict):
        raise BadRow("wrong_type", f"row is {type(row).__name__}, expected an object")
    if fmt == "chat":
        return _chat_prompt(row), None
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction") or "", _text(row, "input", required=False)
        question = f"{instruction}\n\n{extra}" if extra else instruction
        return question, _text(row, "output", required=False) or None
    if fmt == "gsm8k":
        question = _text(row, "question") or ""
        return question, _final_number(_text(row, "answer"), "answer")
    question = _text(row, prompt_column) or ""
    if not answer_column:
        return question, None
    if row.get(answer_column) is None:
        raise BadRow("missing_field", f"no {answer_column!r} field")
    return question, _final_number(row[answer_column], answer_column)


def _row_id(row: dict[str, Any], n: int) -> str:
    value = row.get("id")
    if value is None:
        return f"row-{n}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow("wrong_type", f"'id' is {type(value).__name__}, expected a string or integer")
    if not str(value).strip():
        raise BadRow("empty_text", "'id' is empty")
    return str(value).strip()


def parse_each(
    rows: list[tuple[int, Any]], parse: Callable[[Any, int], T], key: Callable[[T], str], unit: str = "row"
) -> tuple[list[T], list[tuple[str, int, str]]]:
    """`parse` (which raises BadRow) over every row: the valid records in row order, and (reason,
    line number, detail) for each skipped row; a record whose `key` an earlier one had is a duplicate_id."""
    valid: list[T] = []
    failures: list[tuple[str, int, str]] = []
    first_seen: dict[str, int] = {}
    for n, row in rows:
        try:
            if isinstance(row, BadRow):
                raise row
            record = parse(row, n)
            k = key(record)
            if k in first_seen:
                raise BadRow("duplicate_id", f"id {k!r} already used on {unit} {first_seen[k]}")
        except BadRow as e:
            failures.append((e.reason, n, str(e)))
            continue
        first_seen[k] = n
        valid.append(record)
    return valid, failures


def parse_rows(
    rows: list[tuple[int, Any]],
    fmt: str,
    prompt_column: str,
    answer_column: str,
    unit: str = "row",
) -> tuple[list[Prompt], list[tuple[str, int, str]]]:
    """The valid prompts in row order, and (reason, line number, detail) for each skipped row."""

    def parse(row: Any, n: int) -> Prompt:
        question, answer = parse_row(row, fmt, prompt_column, answer_column)
        return Prompt(id=_row_id(row, n), question=question, answer=answer)

    return parse_each(rows, parse, lambda p: p.id, unit)


# ----------------------------------------------------------------------------------------------
# The task


def read_prompts(
    path: str, format: str, prompt_column: str, answer_column: str
) -> tuple[list[Prompt], dict[str, int], str, str]:
    """The valid prompts of `path`, the skipped rows per reason, and the format and answer column
    read (under auto: detected from the columns)."""
    rows, unit = read_rows(path)
    if not any(isinstance(row, dict) for _, row in rows):  # nothing to detect a format from
        failures = [(reason, n, detail) for n, row in rows for reason, detail in [_failure(row)]]
        raise UserError(_no_valid_rows(path, unit, format, failures))
    detected = format == "auto"
    if detected:
        columns = {k for _, row in rows if isinstance(row, dict) for k in row}
        format = detect_format(columns, prompt_column, answer_column)
        if format == "columns" and not answer_column and "answer" in columns:
            answer_column = "answer"
        log.info("%s: detected format %r from columns %s", path, format, sorted(columns))
        named = {
            "data.prompt_column": prompt_column if prompt_column != "prompt" else "",
            "data.answer_column": answer_column,
        }
        if format != "columns" and (unread := [f"{k}={v}" for k, v in named.items() if v]):
            raise UserError(
                f"{path}: {' and '.join(unread)} is set, but columns {sorted(columns)} were detected as the "
                f"{format} format, which does not read it; set data.format=columns (the named columns must "
                "be in the file), or remove it"
            )
    valid, failures = parse_rows(rows, format, prompt_column, answer_column, unit)
    _log_skips(path, unit, failures, len(valid))
    if not valid:
        hint = (
            f" (detected from the {prompt_column} and {answer_column} columns, whose answers are checked as "
            "numbers; set data.format=chat to read the prompts without them)"
            if detected and format == "columns" and answer_column
            else ""
        )
        raise UserError(_no_valid_rows(path, unit, format, failures) + hint)
    return valid, dict(Counter(reason for reason, _, _ in failures)), format, answer_column


class FileTask:
    """The Task protocol over a prompt file or hub dataset (see the module docstring).

    Args:
        path: local .json/.jsonl/.parquet file, or a hub dataset id ("owner/name[:config]").
        format: auto | chat | alpaca | gsm8k | columns.
        prompt_column, answer_column: the columns read when format=columns.
        eval_prompts: rows held out for 'eval' (at most all but one valid row).
        seed: shuffle seed for the split.
        eval_path: a second source for 'eval' (read in `path`'s format): `eval_prompts` of its rows,
            and every row of `path` serves 'train' and 'round'; empty: 'eval' is held out of `path`.
    """

    name = "file"
    verifiable: bool = False  # set per instance: True for gsm8k, and columns with an answer column

    def __init__(
        self,
        path: str,
        *,
        format: str = "auto",
        prompt_column: str = "prompt",
        answer_column: str = "",
        eval_prompts: int = 16,
        seed: int = 0,
        eval_path: str = "",
    ) -> None:
        if format not in ("auto", *FORMATS):
            raise UserError(f"data.format: unknown {format!r}; valid: auto, {', '.join(FORMATS)}")
        self.source = path
        valid, self.skipped, self.format, answer_column = read_prompts(path, format, prompt_column, answer_column)
        self.verifiable = self.format == "gsm8k" or (self.format == "columns" and bool(answer_column))
        random.Random(seed).shuffle(valid)
        self._warned: set[str] = set()
        if eval_path:
            held, *_ = read_prompts(eval_path, self.format, prompt_column, answer_column)
            random.Random(seed).shuffle(held)
            if len(held) < eval_prompts:
                log.warning(
                    "%s: only %d valid prompts; evaluating %d, not %d", eval_path, len(held), len(held), eval_prompts
                )
            self._pool, self._eval = valid, held[:eval_prompts]
            return
        k = min(eval_prompts, len(valid) - 1)
        if k < eval_prompts:
            log.warning("%s: only %d valid prompts; holding out %d for eval, not %d", path, len(valid), k, eval_prompts)
        self._pool, self._eval = valid[: len(valid) - k], valid[len(valid) - k :]

    def prompts(self, split: str, n: int, *, offset: int = 0) -> list[Prompt]:
        """`n` prompts of `split` from `offset`; 'train'/'round' wrap around, 'eval' stops at its end."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0 or offset < 0:
            raise ValueError(f"n and offset must be >= 0, got n={n}, offset={offset}")
        if split == "eval":
            return self._eval[offset : offset + n]
        size = len(self._pool)
        if n > size:  # one call never repeats a prompt: ids must stay unique within a round
            self._warn_once(f"{n} prompts asked for, only {size} training prompts exist; giving {size}")
            n = size
        if offset + n > size:
            self._warn_once(f"all {size} training prompts used; wrapping around, prompts repeat from here on")
        return [self._pool[(offset + i) % size] for i in range(n)]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s: %s", self.source, message)

    def extract_answer(self, text: str) -> str | None:
        return extract_final_number(text) if self.verifiable else None

    def verify(self, prompt: Prompt, text: str) -> bool:
        return self.verifiable and numbers_equal(text, prompt.answer)


def _failure(row: Any) -> tuple[str, str]:
    """(reason, detail) of a raw row that is not an object."""
    if isinstance(row, BadRow):
        return row.reason, str(row)
    return "wrong_type", f"row is {type(row).__name__}, expected an object"


def _no_valid_rows(source: str, unit: str, fmt: str, failures: list[tuple[str, int, str]]) -> str:
    """One line: how many rows failed, per reason, and the first failing one with why."""
    if not failures:
        return f"{source}: no valid prompt rows (the input has no rows)"
    counts = ", ".join(f"{r}={c}" for r, c in Counter(r for r, _, _ in failures).items())
    reason, n, detail = min(failures, key=lambda f: f[1])
    return (
        f"{source}: no valid prompt rows (format {fmt}): all {len(failures)} {unit}s failed ({counts}); "
        f"first: {unit} {n}: {reason}: {detail}"
    )


def _log_skips(source: str, unit: str, failures: list[tuple[str, int, str]], loaded: int) -> None:
    """A few warnings per reason with line numbers, then one summary line."""
    by_reason: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for reason, n, detail in failures:
        by_reason[reason].append((n, detail))
    for reason, items in by_reason.items():
        for n, detail in items[:_LOGGED_PER_REASON]:
            log.warning("%s %s %d skipped (%s): %s", source, unit, n, reason, detail)
        if len(items) > _LOGGED_PER_REASON:
            log.warning("%s: %d more %s rows skipped", source, len(items) - _LOGGED_PER_REASON, reason)
    if failures:
        counts = ", ".join(f"{r}={len(v)}" for r, v in by_reason.items())
        log.warning("%s: %d prompts loaded, %d rows skipped (%s)", source, loaded, len(failures), counts)
    else:
        log.info("%s: %d prompts loaded", source, loaded)
