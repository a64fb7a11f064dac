"""The run's report: report.json (one row per round, stable keys), report.md and PNG plots.

Metric keys are `<stage>/<quantity>` (docs/architecture.md). Pure: json, matplotlib (Agg).
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Any

from evolve_ray.report_strategies import strategy_section
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


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    keys = [k for k in keys if any(k in r for r in rows)]
    head = "| round | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = "".join(f"| {r['round']} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |\n" for r in rows)
    return head + body


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_markdown(run: Path, rows: list[dict[str, Any]]) -> Path:
    keys = sorted({k for r in rows for k in r if k != "round"})
    turn_keys = [k for k in keys if k.startswith("eval/")]
    pair_keys = [k for k in keys if k.startswith(("pairs/", "score/", "refine/", "gen/"))]
    train_keys = [k for k in keys if k.startswith(("train/", "sync/", "policy/"))]
    time_keys = [k for k in keys if k.startswith("time/")]
    parts = [f"# evolve_ray report: {run.name}\n", "Rows come from report.json; keys are `<stage>/<quantity>`.\n"]
    for title, ks in (
        ("Evaluation per turn", turn_keys),
        ("Data collection and pairs", pair_keys),
        ("Training and weight sync", train_keys),
        ("Time per stage (s)", time_keys),
    ):
        if ks:
            parts.append(f"\n## {title}\n\n" + _table(rows, ks))
    parts.append(strategy_section(run, rows))
    plots = sorted((run / "plots").glob("*.png")) if (run / "plots").exists() else []
    if plots:
        parts.append("\n## Plots\n\n" + "".join(f"![{p.stem}](plots/{p.name})\n" for p in plots))
    out = run / "report.md"
    atomic_write(out, "".join(parts).encode())
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

    def save(fig, name: str) -> None:
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
        plt.close(fig)
        atomic_write(out_dir / name, png.getvalue())
        paths.append(out_dir / name)

    quantity = "accuracy" if any(turn_series(r, "accuracy") for r in rows) else "score"
    fig, ax = plt.subplots(figsize=(5, 3.2))
    first = [turn_series(r, quantity)[:1] or [math.nan] for r in rows]
    last = [turn_series(r, quantity)[-1:] or [math.nan] for r in rows]
    ax.plot(rounds, [f[0] for f in first], "o-", label="direct (turn 0)")
    ax.plot(rounds, [x[0] for x in last], "s-", label="after refinement (last turn)")
    ax.set(xlabel="round", ylabel=f"eval {quantity}", title=f"{quantity}: direct vs refined")
    ax.legend()
    save(fig, "score_per_round.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in rows:
        series = turn_series(r, quantity)
        ax.plot(range(len(series)), series, "o-", label=f"round {r['round']}")
    ax.set(xlabel="refinement turn", ylabel=f"eval {quantity}", title="per-turn curves")
    ax.legend(fontsize=7)
    save(fig, "per_turn.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(rounds, [r.get("pairs/count", 0) for r in rows])
    ax.set(xlabel="round", ylabel="pairs", title="pair yield")
    save(fig, "pairs.png")

    stages = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/round_s"})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bottom = [0.0] * len(rows)
    for k in stages:
        vals = [r.get(k, 0.0) for r in rows]
        ax.bar(rounds, vals, bottom=bottom, label=k.split("/", 1)[1])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(xlabel="round", ylabel="seconds", title="time per stage")
    if stages:
        ax.legend(fontsize=7)
    save(fig, "time_per_stage.png")
    return paths


def write_report(run: Path) -> Path:
    rows = load_rows(run)
    if rows:
        write_plots(run, rows)
    return write_markdown(run, rows)
