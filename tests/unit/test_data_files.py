"""Prompt files: each format, every skip reason counted exactly, splits, wrap-around, GSM8K numbers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from evolve_ray.config import DataConfig
from evolve_ray.driver.builders import make_task
from evolve_ray.errors import UserError
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.tasks.files import FileTask
from evolve_ray.tasks.numeric import extract_final_number, numbers_equal


def write_jsonl(path: Path, lines: list[object | bytes]) -> Path:
    """Objects become JSON lines; bytes are written as they are (bad lines, blank lines)."""
    raw = [x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def all_prompts(task: FileTask):
    return task.prompts("train", 10_000) + task.prompts("eval", 10_000)


# ----------------------------------------------------------------------------------------------
# Formats and skip reasons


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"id": "a", "prompt": "Hello?"},  # line 1
            {"id": "b", "prompt": " Write a poem. "},  # 2
            b'{"id": "c", "prompt": ',  # 3 invalid_json
            {"id": "d", "text": "no prompt here"},  # 4 missing_field
            {"id": "e", "prompt": "   "},  # 5 empty_text
            b'{"id": "f", "prompt": "caf\xe9"}',  # 6 non_utf8 (latin-1 e-acute)
            {"id": "a", "prompt": "same id as line 1"},  # 7 duplicate_id
            {"id": "g", "prompt": "x" * 500},  # 8 a long prompt is kept (the generators skip what does not fit)
            {"id": "h", "prompt": 42},  # 9 wrong_type
            {"id": "i", "prompt": ["a", "list"]},  # 10 wrong_type
            b"",  # 11 blank: not a row
            {"id": 7, "prompt": "Third."},  # 12 integer id
            ["not", "an", "object"],  # 13 wrong_type
        ],
    )


def test_chat_prompt_column_counts_each_reason_and_keeps_valid_rows(chat_file: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="evolve_ray.tasks.files"):
        task = FileTask(str(chat_file), format="chat", eval_prompts=0)
    assert task.skipped == {
        "invalid_json": 1,
        "missing_field": 1,
        "empty_text": 1,
        "non_utf8": 1,
        "duplicate_id": 1,
        "wrong_type": 3,
    }
    got = {p.id: (p.question, p.answer) for p in all_prompts(task)}
    assert got == {"a": ("Hello?", None), "b": ("Write a poem.", None), "g": ("x" * 500, None), "7": ("Third.", None)}
    assert task.verifiable is False and task.verify(task.prompts("train", 1)[0], "Hello?") is False
    log = caplog.text
    for line, reason in [
        (3, "invalid_json"),
        (4, "missing_field"),
        (6, "non_utf8"),
        (7, "duplicate_id"),
        (13, "wrong_type"),
    ]:
        assert f"line {line} skipped ({reason})" in log
    assert "4 prompts loaded, 8 rows skipped" in log


def test_only_a_few_lines_logged_per_reason_then_a_count(tmp_path: Path, caplog) -> None:
    path = write_jsonl(tmp_path / "many.jsonl", [b"{bad"] * 10 + [{"prompt": "ok"}])
    with caplog.at_level(logging.WARNING, logger="evolve_ray.tasks.files"):
        task = FileTask(str(path), eval_prompts=0)
    assert task.skipped == {"invalid_json": 10}
    assert caplog.text.count("skipped (invalid_json)") == 3
    assert "7 more invalid_json rows skipped" in caplog.text
    assert task.prompts("round", 1)[0].id == "row-11"  # ids follow file line numbers


def test_chat_messages_json_array(tmp_path: Path, caplog) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}]},
        {"messages": [{"role": "assistant", "content": "no user turn"}]},  # missing_field
        {"messages": "not a list"},  # wrong_type
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "user", "content": "later turn"}]},
        {"messages": [{"role": "user", "content": ""}]},  # empty_text
        {"messages": [{"role": "user", "content": "MARK"}]},  # non_utf8 once MARK is swapped for a bad byte
        {"messages": [{"role": "user", "content": {"text": "x"}}]},  # wrong_type
    ]
    data = json.dumps(rows, indent=1).encode().replace(b"MARK", b"caf\xe9")
    path = tmp_path / "chat.json"
    path.write_bytes(data)
    with caplog.at_level(logging.INFO, logger="evolve_ray.tasks.files"):
        task = FileTask(str(path), eval_prompts=0)
    assert task.format == "chat" and "detected format 'chat'" in caplog.text
    assert task.skipped == {"missing_field": 1, "wrong_type": 2, "empty_text": 1, "non_utf8": 1}
    assert {p.id: p.question for p in all_prompts(task)} == {"row-1": "Q1", "row-4": "Q2"}
    assert "row 6 skipped (non_utf8)" in caplog.text


def test_alpaca_joins_input_and_keeps_output_unverified(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate to English.", "input": "hola", "output": "hello"},
            {"instruction": "Name a colour.", "input": "", "output": "red"},
            {"input": "x", "output": "y"},  # missing_field
            {"instruction": "", "input": "x", "output": "y"},  # empty_text
            {"instruction": "Sum.", "input": 3, "output": "y"},  # wrong_type
        ],
    )
    task = FileTask(str(path), eval_prompts=0)
    assert task.format == "alpaca"
    assert task.skipped == {"missing_field": 1, "empty_text": 1, "wrong_type": 1}
    got = {p.id: (p.question, p.answer) for p in all_prompts(task)}
    assert got == {"row-1": ("Translate to English.\n\nhola", "hello"), "row-2": ("Name a colour.", "red")}
    p = task.prompts("train", 1)[0]
    assert task.verifiable is False and task.verify(p, p.answer or "") is False
    assert task.extract_answer("the answer is 5") is None


GSM8K_ROWS = [
    {"question": "Tom has 2 apples and buys 2. How many?", "answer": "2+2=<<2+2=4>>4\n#### 4"},
    {"question": "Price of 1,000 pens at $1.234 each?", "answer": "1000*1.234=1234\n#### 1,234"},
    {"question": "Temperature drop from 3 to -2?", "answer": "It falls 5 degrees.\n#### -5"},
    {"question": "Half of 7?", "answer": "#### 3.50"},
    {"question": "No final number", "answer": "I do not know"},  # bad_answer
    {"question": "", "answer": "#### 3"},  # empty_text
    {"question": "Missing answer"},  # missing_field
    {"question": "Answer of the wrong type", "answer": 12},  # wrong_type
]


def test_gsm8k_parquet_answers_are_final_numbers_and_verify(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in GSM8K_ROWS if not isinstance(r.get("answer"), int)]  # parquet columns have one type
    table = pa.table({k: [r.get(k) for r in rows] for k in ("question", "answer")})
    pq.write_table(table, tmp_path / "gsm8k.parquet")
    task = FileTask(str(tmp_path / "gsm8k.parquet"), eval_prompts=1)
    assert task.format == "gsm8k" and task.verifiable
    assert task.skipped == {"bad_answer": 1, "empty_text": 1, "missing_field": 1}
    assert {p.id: p.answer for p in all_prompts(task)} == {"row-1": "4", "row-2": "1234", "row-3": "-5", "row-4": "3.5"}
    for p in all_prompts(task):
        assert p.answer is not None
        assert task.verify(p, f"Working... so the answer is {p.answer}.")
        assert not task.verify(p, f"Working... so the answer is {p.answer}1.")
    half = next(p for p in all_prompts(task) if p.id == "row-4")
    assert task.verify(half, "It is 3.50") and task.verify(half, "#### 3.5 (not 9)")
    assert not task.verify(half, "no idea")


def test_gsm8k_jsonl_wrong_type(tmp_path: Path) -> None:
    task = FileTask(str(write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)), format="gsm8k", eval_prompts=0)
    assert task.skipped == {"bad_answer": 1, "empty_text": 1, "missing_field": 1, "wrong_type": 1}
    assert len(all_prompts(task)) == 4


def test_columns_with_numeric_answers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "cols.jsonl",
        [
            {"id": "m1", "q": "What is 3*4?", "a": 12},
            {"id": "m2", "q": "Half of 7?", "a": "3.50"},
            {"id": "m3", "q": "Yes or no?", "a": True},  # wrong_type
            {"id": "m4", "q": "No answer"},  # missing_field
            {"id": "m5", "q": "Word answer", "a": "Paris"},  # bad_answer
            {"id": "m1", "q": "Again", "a": 1},  # duplicate_id
        ],
    )
    task = FileTask(str(path), format="columns", prompt_column="q", answer_column="a", eval_prompts=0)
    assert task.verifiable
    assert task.skipped == {"wrong_type": 1, "missing_field": 1, "bad_answer": 1, "duplicate_id": 1}
    by_id = {p.id: p for p in all_prompts(task)}
    assert {k: (p.question, p.answer) for k, p in by_id.items()} == {
        "m1": ("What is 3*4?", "12"),
        "m2": ("Half of 7?", "3.5"),
    }
    assert task.verify(by_id["m1"], "3*4 = 12") and not task.verify(by_id["m1"], "3*4 = 13")
    assert task.verify(by_id["m2"], "3.5") and task.extract_answer("about 3.50") == "3.5"
    unverified = FileTask(str(path), format="columns", prompt_column="q", eval_prompts=0)
    assert not unverified.verifiable and unverified.skipped == {"duplicate_id": 1}


def test_auto_detects_each_format(tmp_path: Path) -> None:
    cases = {
        "gsm8k": {"question": "1+1?", "answer": "#### 2"},
        "alpaca": {"instruction": "Say hi."},
        "chat": {"messages": [{"role": "user", "content": "Hi"}]},
        "columns": {"text": "Hi"},
    }
    for fmt, row in cases.items():
        column = {"prompt_column": "text"} if fmt == "columns" else {}
        task = FileTask(str(write_jsonl(tmp_path / f"{fmt}.jsonl", [row])), **column, eval_prompts=0)
        assert task.format == fmt
    with pytest.raises(UserError, match=r"cannot detect the data format from columns \['body'\]"):
        FileTask(str(write_jsonl(tmp_path / "odd.jsonl", [{"body": "Hi"}])))


def test_auto_reads_the_columns_a_user_named_or_refuses_them(tmp_path: Path) -> None:
    """data.answer_column named beside the prompt column makes the file `columns` (its answers
    checked), though a `prompt` column alone would read as chat; a named column the detected
    format would not read is refused in one line, not dropped."""
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "What is 3*4?", "solution": 12}])
    assert FileTask(str(path), eval_prompts=0).format == "chat"
    task = FileTask(str(path), answer_column="solution", eval_prompts=0)
    assert task.format == "columns" and task.verifiable
    assert [p.answer for p in all_prompts(task)] == ["12"]
    gsm = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    for named, shown in (
        ({"answer_column": "solution"}, "data.answer_column=solution"),
        ({"prompt_column": "q"}, "data.prompt_column=q"),
    ):
        with pytest.raises(UserError, match=rf"{shown} is set, but columns .* were detected as the gsm8k format"):
            FileTask(str(gsm), **named, eval_prompts=0)


# ----------------------------------------------------------------------------------------------
# Errors that stop the load


def test_no_valid_row_names_the_file_and_the_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [b"{oops", {"prompt": ""}, {"prompt": 3}, {"prompt": 4}])
    with pytest.raises(UserError) as e:
        FileTask(str(path), format="chat")
    msg = str(e.value)
    assert str(path) in msg and "invalid_json=1" in msg and "empty_text=1" in msg and "wrong_type=2" in msg
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    with pytest.raises(UserError, match="empty.jsonl: no valid prompt rows.*no rows"):
        FileTask(str(tmp_path / "empty.jsonl"), format="chat")


def test_missing_file_unreadable_json_and_offline_hub_are_user_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(UserError, match=f"data file not found: {missing}"):
        FileTask(str(missing))
    (tmp_path / "broken.json").write_text('[{"prompt": "a"},\n {"prompt": ]')
    with pytest.raises(UserError, match="broken.json: not valid JSON at line 2"):
        FileTask(str(tmp_path / "broken.json"))
    (tmp_path / "p.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        FileTask(str(tmp_path / "p.txt"))
    with pytest.raises(UserError, match="nobody/no-such-dataset: no such local file"):  # tests run offline
        FileTask("nobody/no-such-dataset")


# ----------------------------------------------------------------------------------------------
# Splits


@pytest.fixture
def fifty(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "fifty.jsonl", [{"prompt": f"question {i}"} for i in range(50)])


def test_splits_are_disjoint_deterministic_and_seeded(fifty: Path) -> None:
    task = FileTask(str(fifty), eval_prompts=10, seed=1)
    train, evals = task.prompts("train", 40), task.prompts("eval", 100)
    assert len(train) == 40 and len(evals) == 10
    assert {p.id for p in train}.isdisjoint(p.id for p in evals)
    assert {p.id for p in train} | {p.id for p in evals} == {f"row-{i}" for i in range(1, 51)}
    assert task.prompts("round", 40) == train  # round and train share the pool
    again = FileTask(str(fifty), eval_prompts=10, seed=1)
    assert again.prompts("train", 40) == train and again.prompts("eval", 10) == evals
    other = FileTask(str(fifty), eval_prompts=10, seed=2)
    assert other.prompts("train", 40) != train
    assert [p.id for p in train] != sorted((p.id for p in train), key=lambda s: int(s[4:]))  # shuffled
    assert task.prompts("eval", 3, offset=8) == evals[8:]  # eval stops at its end


def test_round_wraps_around_with_one_warning(fifty: Path, caplog) -> None:
    task = FileTask(str(fifty), eval_prompts=10)
    pool = task.prompts("round", 40)
    with caplog.at_level(logging.WARNING, logger="evolve_ray.tasks.files"):
        assert task.prompts("round", 16, offset=32) == pool[32:] + pool[:8]
        assert task.prompts("round", 16, offset=48) == pool[8:24]
        assert task.prompts("round", 16, offset=56) == pool[16:32]  # within the second pass: no warning
    assert caplog.text.count("wrapping around") == 1
    assert [p.id for p in task.prompts("round", 100, offset=5)] == [p.id for p in pool[5:] + pool[:5]]  # capped
    with pytest.raises(ValueError, match="split must be one of"):
        task.prompts("test", 1)


def test_eval_holdout_leaves_at_least_one_training_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "three.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    task = FileTask(str(path), eval_prompts=16)
    assert len(task.prompts("eval", 16)) == 2 and len(task.prompts("train", 16)) == 1


# ----------------------------------------------------------------------------------------------
# GSM8K numbers


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so 3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("She pays $12,345,678.90 in total", "12345678.9"),
        ("The change is -5 degrees", "-5"),
        ("+8 points", "8"),
        ("3.50", "3.5"),
        ("7.0", "7"),
        ("-0.0", "0"),
        ("007 agents", "7"),
        ("100 and then 2000", "2000"),
        ("pages 3-5", "5"),  # a hyphen between numbers is not a sign
        ("#### 12 (the last number here is 99)", "12"),  # '####' wins over the last number
        ("first #### 3 then #### 4", "4"),
        ("The answer is 42.", "42"),
        ("no numbers at all", None),
        ("####", None),
        ("", None),
    ],
)
def test_extract_final_number(text: str, number: str | None) -> None:
    assert extract_final_number(text) == number


def test_numbers_equal_compares_values() -> None:
    assert numbers_equal("3.50", "3.5") and numbers_equal("1,234", "1234.00") and numbers_equal("#### -5", "-5.0")
    assert not numbers_equal("3.5", "35") and not numbers_equal("5", "-5")
    assert not numbers_equal(None, "1") and not numbers_equal("1", None) and not numbers_equal("none", "none")


# ----------------------------------------------------------------------------------------------
# The registry


def test_make_task_builds_each_task(fifty: Path) -> None:
    assert make_task(DataConfig(seed=3)) == ArithTask(seed=3)
    task = make_task(DataConfig(task="file", path=str(fifty), format="chat", eval_prompts=10, seed=1))
    direct = FileTask(str(fifty), format="chat", eval_prompts=10, seed=1)
    assert isinstance(task, FileTask) and task.format == "chat" and task.skipped == {}
    assert task.prompts("eval", 100) == direct.prompts("eval", 100)  # the data section's split and seed
    with pytest.raises(UserError, match="unknown task 'poetry'; valid: arith, file"):
        make_task(DataConfig(task="poetry"))


# ----------------------------------------------------------------------------------------------
# The input traps of issue #16: each one clear line, or it works


def test_csv_and_tsv_prompt_files_read_through_datasets(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text('id,question,answer\nq1,"What is 2+3, in digits?",#### 5\nq2,1+1?,#### 2\n')
    (tmp_path / "p.tsv").write_text("id\tprompt\nt1\tHello there\nt2\t\n")
    csv_task = FileTask(str(tmp_path / "p.csv"), eval_prompts=0)
    assert csv_task.format == "gsm8k" and csv_task.verifiable
    by_id = {p.id: p for p in all_prompts(csv_task)}
    assert by_id["q1"].question == "What is 2+3, in digits?" and by_id["q1"].answer == "5"
    tsv_task = FileTask(str(tmp_path / "p.tsv"), eval_prompts=0)
    assert [p.question for p in all_prompts(tsv_task)] == ["Hello there"]
    assert tsv_task.skipped == {"missing_field": 1}  # line 3: an empty cell reads as no value


def test_a_file_where_no_row_parses_says_how_many_failed_and_where(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [b"this is not json"])
    with pytest.raises(UserError) as e:
        FileTask(str(path))
    msg = str(e.value)
    assert "all 1 lines failed (invalid_json=1)" in msg and "first: line 1: invalid_json" in msg, msg
    assert "cannot detect" not in msg
    path = write_jsonl(tmp_path / "two.jsonl", [b"", b'"a string"', b"{oops"])
    with pytest.raises(UserError, match=r"all 2 lines failed \(wrong_type=1, invalid_json=1\); first: line 2"):
        FileTask(str(path))


# ----------------------------------------------------------------------------------------------
# The input traps of issue #28


def test_a_csv_with_prompt_and_answer_columns_checks_the_answers(tmp_path: Path) -> None:
    """Read as chat it dropped the answers and made the task unverifiable; it is the columns format."""
    (tmp_path / "p.csv").write_text("prompt,answer\n2+3=,5\n10+7=,17\n")
    task = FileTask(str(tmp_path / "p.csv"), eval_prompts=0)
    assert (task.format, task.verifiable) == ("columns", True)
    by_question = {p.question: p for p in all_prompts(task)}
    assert by_question["2+3="].answer == "5" and task.verify(by_question["10+7="], "it is 17")
    (tmp_path / "text.jsonl").write_text(json.dumps({"prompt": "Capital of France?", "answer": "Paris"}) + "\n")
    with pytest.raises(UserError, match=r"bad_answer.*set data\.format=chat to read the prompts without them"):
        FileTask(str(tmp_path / "text.jsonl"), eval_prompts=0)
    chat = FileTask(str(tmp_path / "text.jsonl"), format="chat", eval_prompts=0)
    assert not chat.verifiable and chat.prompts("train", 1)[0].question == "Capital of France?"


def test_reading_through_datasets_writes_nothing_under_home(tmp_path: Path) -> None:
    """csv, tsv and parquet go through `datasets`, whose Arrow cache defaulted to ~/.cache/huggingface."""
    import subprocess
    import sys

    (tmp_path / "p.csv").write_text("id,question,answer\nq1,1+1?,#### 2\nq2,2+2?,#### 4\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))} | {"HOME": str(home)}
    code = f"from evolve_ray.tasks.files import FileTask; print(FileTask({str(tmp_path / 'p.csv')!r}).format)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "gsm8k"
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []


def test_held_out_prompts_from_a_second_file_leave_every_row_of_the_first_to_the_rounds(tmp_path: Path) -> None:
    """data.eval_path: the held-out prompts come from it (data.eval_prompts of its rows, read in the
    first file's format) and none of data.path's rows is set aside; without it they are."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"What is {i}+1?", "answer": i + 1} for i in range(10)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"What is {i}+2?", "answer": i + 2} for i in range(6)])
    task = FileTask(str(train), eval_prompts=4, eval_path=str(test))
    assert task.format == "columns" and task.verifiable
    pool = task.prompts("train", 10)
    held = task.prompts("eval", 10)
    assert len({p.question for p in pool}) == 10 and len(held) == 4
    assert {p.question for p in held} <= {f"What is {i}+2?" for i in range(6)}
    assert all(task.verify(p, p.answer) for p in held)
    alone = FileTask(str(train), eval_prompts=4)
    assert len(alone.prompts("eval", 10)) == 4 and len({p.question for p in alone.prompts("train", 10)}) == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no prompt here"}) + "\n")
    with pytest.raises(UserError, match=rf"^{bad}: no valid prompt rows \(format columns\)"):
        FileTask(str(train), eval_prompts=4, eval_path=str(bad))
