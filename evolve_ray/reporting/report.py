"""The run's report: report.json (one row per round, stable keys), report.md / report.html and PNG plots.

Metric keys are `<stage>/<quantity>` (docs/architecture.md). Pure: json, matplotlib (Agg).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from pathlib import Path
from typing import Any

from evolve_ray.reporting.metric_keys import GLOSSARY, explain, glossary_for
from evolve_ray.reporting.report_strategies import strategy_blocks
from evolve_ray.reporting.summary import (
    MAX_COLUMNS,
    eval_quantity,
    fmt,
    headline,
    headline_text,
    round_label,
    split_columns,
)
from evolve_ray.rundir import atomic_write, read_json, write_json

REPORT_JSON = "report.json"
_TURN = re.compile(r"^eval/turn_(\d+)_(score|accuracy)$")


def finite_row(row: dict[str, Any]) -> dict[str, Any]:
    """Scalars only, non-finite numbers dropped (report.json must stay valid JSON)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            if math.isfinite(v):
                out[k] = v
        elif isinstance(v, str):
            out[k] = v
    return out


def load_rows(run: Path) -> list[dict[str, Any]]:
    p = run / REPORT_JSON
    return list(read_json(p)["rounds"]) if p.exists() else []


def append_row(run: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Add (or replace, on resume) the row of `row['round']` and rewrite report.json atomically."""
    rows = [r for r in load_rows(run) if r["round"] != row["round"]] + [finite_row(row)]
    rows.sort(key=lambda r: r["round"])
    write_json(run / REPORT_JSON, {"rounds": rows})
    return rows


def turn_series(row: dict[str, Any], quantity: str) -> list[float]:
    turns = sorted(int(m.group(1)) for k in row if (m := _TURN.match(k)) and m.group(2) == quantity)
    return [row[f"eval/turn_{t}_{quantity}"] for t in turns]


# The report as blocks, rendered to markdown (report.md) and HTML (report.html, images inline).
# ("h", level, text) | ("p", text) | ("table", names, cells) | ("img", file name under plots/, alt)
Block = tuple[Any, ...]

# Sections after the headline: (title, key prefixes), each a table with keys as rows.
SECTIONS = (
    ("Evaluation on held-out prompts", ("eval/",)),
    ("Refinement on the collected chains", ("refine/",)),
    ("Generation and scoring", ("gen/", "score/", "buffer/")),
    ("Pairs", ("pairs/",)),
    ("Training and weight push", ("train/", "sync/", "policy/")),
    ("Faults", ("fault/",)),
    ("Time per stage (s)", ("time/",)),
)
KEY_PLOTS = ("score_per_round.png", "per_turn.png")
SECTION_PLOTS = {"Pairs": "pairs.png", "Time per stage (s)": "time_per_stage.png"}


def _key_order(key: str) -> tuple[int, int, str]:
    """Glossary order (accuracy before shares, ...), then turn number (turn_10 after turn_9)."""
    entry = explain(key)
    turn = re.search(r"turn_(\d+)", key)
    return (GLOSSARY.index(entry) if entry else len(GLOSSARY), int(turn.group(1)) if turn else -1, key)


def _transposed(rows: list[dict[str, Any]], keys: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Keys as rows, rounds as columns; more rounds than fit are split over several tables."""
    tables = []
    step = MAX_COLUMNS - 1
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        names = ["key", *[round_label(r["round"]) for r in chunk]]
        tables.append((names, [[f"`{k}`", *[fmt(r.get(k), 4) for r in chunk]] for k in keys]))
    return tables


def report_blocks(run: Path, rows: list[dict[str, Any]]) -> list[Block]:
    """The report, headline first: the per-round table, the key plots, one section per stage, a glossary."""
    plots = {p.name for p in (run / "plots").glob("*.png")} if (run / "plots").exists() else set()
    blocks: list[Block] = [("h", 1, f"evolve_ray report: {run.name}")]
    if not rows:
        return [*blocks, ("p", "No round has finished yet.")]
    quantity = eval_quantity(rows)
    blocks += [
        ("h", 2, "Summary"),
        (
            "p",
            f"Held-out {quantity} of the direct answer and after each refinement turn; the shares of prompts "
            "turn 1 fixed / broke; pairs collected; seconds per round. Rows come from report.json "
            '("start" is the evaluation before training).',
        ),
    ]
    blocks += [("table", n, c) for n, c in split_columns(*headline(rows))]
    blocks += [("img", name, name.removesuffix(".png")) for name in KEY_PLOTS if name in plots]
    keys = sorted({k for r in rows for k in r if k != "round"})
    for title, prefixes in SECTIONS:
        section = sorted((k for k in keys if k.startswith(prefixes)), key=_key_order)
        if not section:
            continue
        blocks.append(("h", 2, title))
        blocks += [("table", n, c) for n, c in _transposed(rows, section)]
        if SECTION_PLOTS.get(title) in plots:
            blocks.append(("img", SECTION_PLOTS[title], SECTION_PLOTS[title].removesuffix(".png")))
    others = [k for k in keys if not k.startswith(tuple(p for _, ps in SECTIONS for p in ps))]
    if others:
        blocks += [("h", 2, "Other keys"), *[("table", n, c) for n, c in _transposed(rows, others)]]
    blocks += strategy_blocks(run, rows)
    entries = glossary_for(keys)
    blocks += [
        ("h", 2, "What the keys mean"),
        ("p", "Keys are `<stage>/<quantity>`; k is a refinement turn (0 = the direct answer)."),
        ("table", ["key", "meaning"], [[f"`{p}`", m] for p, m in entries]),
    ]
    unexplained = [k for k in keys if explain(k) is None]
    if unexplained:
        blocks.append(("p", "Not in the glossary: " + ", ".join(f"`{k}`" for k in unexplained)))
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "table":
            names, cells = b[1], b[2]
            lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            parts.append("\n".join(lines))
        elif b[0] == "img":
            parts.append(f"![{b[2]}](plots/{b[1]})")
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[Block], run: Path) -> str:
    """A single page: the same blocks, plots embedded as data URIs (it opens anywhere)."""
    esc = html.escape

    def code(text: str) -> str:  # `key` -> <code>key</code>, as in the markdown
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))

    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{code(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{esc(n)}</th>" for n in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{code(c)}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "img":
            data = base64.b64encode((run / "plots" / b[1]).read_bytes()).decode()
            body.append(f'<img alt="{esc(b[2])}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
    )
    title = esc(blocks[0][2])
    return f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>{style}</style></head>" + (
        "<body>" + "\n".join(body) + "</body></html>\n"
    )


def write_markdown(run: Path, rows: list[dict[str, Any]]) -> Path:
    blocks = report_blocks(run, rows)
    out = run / "report.md"
    atomic_write(out, to_markdown(blocks).encode())
    atomic_write(run / "report.html", to_html(blocks, run).encode())
    return out


def write_plots(run: Path, rows: list[dict[str, Any]]) -> list[Path]:
    # matplotlib's font cache goes inside the run directory (the only place the project writes),
    # not ~/.cache/matplotlib, unless the user chose a place.
    os.environ.setdefault("MPLCONFIGDIR", str(run / ".cache" / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = run / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in rows]
    paths: list[Path] = []

    def round_axis(ax) -> None:  # one tick per round, round -1 reads "start"
        ax.set_xticks(rounds, [round_label(r) for r in rounds])
        ax.set_xlabel("round")

    def save(fig, name: str) -> None:
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
        plt.close(fig)
        atomic_write(out_dir / name, png.getvalue())
        paths.append(out_dir / name)

    quantity = eval_quantity(rows)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    first = [turn_series(r, quantity)[:1] or [math.nan] for r in rows]
    last = [turn_series(r, quantity)[-1:] or [math.nan] for r in rows]
    ax.plot(rounds, [f[0] for f in first], "o-", label="direct (turn 0)")
    ax.plot(rounds, [x[0] for x in last], "s-", label="after refinement (last turn)")
    ax.set(ylabel=f"eval {quantity}", title=f"{quantity}: direct vs refined")
    round_axis(ax)
    ax.legend()
    save(fig, "score_per_round.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    longest = 0
    for r in rows:
        series = turn_series(r, quantity)
        longest = max(longest, len(series))
        ax.plot(range(len(series)), series, "o-", label="start" if r["round"] < 0 else f"round {r['round']}")
    ax.set_xticks(range(longest))
    ax.set(xlabel="refinement turn (0 = direct answer)", ylabel=f"eval {quantity}", title="per-turn curves")
    ax.legend(fontsize=7)
    save(fig, "per_turn.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(rounds, [r.get("pairs/count", 0) for r in rows])
    ax.set(ylabel="pairs", title="pair yield")
    round_axis(ax)
    save(fig, "pairs.png")

    stages = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/round_s"})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bottom = [0.0] * len(rows)
    for k in stages:
        vals = [r.get(k, 0.0) for r in rows]
        ax.bar(rounds, vals, bottom=bottom, label=k.split("/", 1)[1])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(ylabel="seconds", title="time per stage")
    round_axis(ax)
    if stages:
        ax.legend(fontsize=7)
    save(fig, "time_per_stage.png")
    return paths


def closing_text(run: Path) -> str:
    """What `demo` and `run` print when they end: the headline table, then where to read more."""
    run = run.resolve()
    plots = sorted((run / "plots").glob("*.png")) if (run / "plots").exists() else []
    return "\n".join(
        [
            "",
            headline_text(load_rows(run)),
            "",
            f"report: {run / 'report.md'} (and report.html)",
            "plots:  " + ", ".join(str(p) for p in plots),
            f"log:    {run / 'run.log'}",
        ]
    )


def write_report(run: Path) -> Path:
    rows = load_rows(run)
    if rows:
        write_plots(run, rows)
    return write_markdown(run, rows)
