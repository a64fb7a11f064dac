"""Benchmark results, their goals, and the files written: bench.json and bench.md beside it.

A `Figure` is one measured value with, where it has one, the peer measured in the same run and a
goal on the ratio value/peer (or on the value itself). The markdown is rendered from the JSON
document, so the two never disagree. Pure: no ray, no vllm.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evolve_ray.reporting.docs_page import embed, ran_line

SHARED_LOAD = 1.5  # load average at start above which the report says the machine was shared


@dataclass(frozen=True)
class Goal:
    """A target on a figure's ratio to its peer (`on="ratio"`) or on its value (`on="value"`)."""

    on: Literal["ratio", "value"]
    op: Literal[">=", "<="]
    limit: float

    def check(self, value: float, ratio: float | None) -> bool | None:
        """True/False when the quantity the goal is on was measured, None when it was not."""
        x = ratio if self.on == "ratio" else value
        if x is None or not math.isfinite(x):
            return None
        return x >= self.limit if self.op == ">=" else x <= self.limit

    def text(self, unit: str) -> str:
        return f"{self.op} {self.limit:g}x" if self.on == "ratio" else f"{self.op} {self.limit:g} {unit}"


@dataclass(frozen=True)
class Figure:
    """One measured value; `ratio` is value / peer when a peer was measured."""

    name: str
    value: float
    unit: str
    peer: float | None = None
    peer_name: str = ""
    goal: Goal | None = None

    @property
    def ratio(self) -> float | None:
        if self.peer is None or self.peer == 0 or not math.isfinite(self.peer):
            return None
        return self.value / self.peer

    def row(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": _finite(self.value),
            "unit": self.unit,
            "peer": _finite(self.peer),
            "peer_name": self.peer_name,
            "ratio": _finite(ratio),
            "goal": self.goal.text(self.unit) if self.goal else None,
            "met": self.goal.check(self.value, ratio) if self.goal else None,
        }


@dataclass
class BenchResult:
    """What one benchmark hands back: figures, the settings it ran with, peak memory per process."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "error": self.error,
            "settings": self.settings,
            "figures": [f.row() for f in self.figures],
            "peak_rss_mb": self.memory_mb,
            "notes": self.notes,
        }


def build_doc(results: list[BenchResult], run: dict[str, Any]) -> dict[str, Any]:
    """The bench.json document: run facts (machine, versions, load, command) and every result."""
    benches = [r.to_dict() for r in results]
    rows = [(b["name"], f) for b in benches for f in b["figures"] if f["goal"]]
    shared = max(run["load_avg_start"]) > SHARED_LOAD
    return {
        **run,
        "shared_machine": shared,
        "benchmarks": benches,
        "goals": {
            "met": [f"{name}: {f['name']}" for name, f in rows if f["met"] is True],
            "missed": [f"{name}: {f['name']}" for name, f in rows if f["met"] is False],
            "unmeasured": [f"{name}: {f['name']}" for name, f in rows if f["met"] is None]
            + [f"{b['name']}: failed ({b['error']})" for b in benches if b["error"]],
        },
    }


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def render_markdown(doc: dict[str, Any]) -> str:
    m, v = doc["machine"], doc["versions"]
    load = ", ".join(f"{x:.2f}" for x in doc["load_avg_start"])
    lines = [
        "# evolve_ray bench",
        "",
        f"`{doc['command']}` at {doc['started']}, {doc['total_seconds']:.0f} s.",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']:.1f} GiB RAM; "
        f"Ray cluster: {m['ray_cluster']}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Load average at start: {load}."
        + (
            f" **The machine was shared** (load > {SHARED_LOAD}): absolute timings are noisy; every figure is a"
            " ratio to a peer measured in the same run."
            if doc["shared_machine"]
            else ""
        ),
        "",
        "| benchmark | figure | value | peer | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in doc["benchmarks"]:
        if b["error"]:
            lines.append(f"| {b['name']} | FAILED: {b['error']} | - | - | - | - | - |")
        for f in b["figures"]:
            peer = f"{fmt(f['peer'])} ({f['peer_name']})" if f["peer"] is not None else "-"
            lines.append(
                f"| {b['name']} | {f['name']} | {fmt(f['value'])} {f['unit']} | {peer} | {fmt(f['ratio'])} "
                f"| {f['goal'] or '-'} | {fmt(f['met'])} |"
            )
    g = doc["goals"]
    lines += ["", f"Goals met: {len(g['met'])}; missed: {len(g['missed'])}; unmeasured: {len(g['unmeasured'])}."]
    lines += [f"- missed: {x}" for x in g["missed"]] + [f"- unmeasured: {x}" for x in g["unmeasured"]]
    lines += ["", "## Peak resident memory (MB)", "", "| benchmark | process | peak RSS MB |", "|---|---|---|"]
    for b in doc["benchmarks"]:
        lines += [f"| {b['name']} | {proc} | {mb:.0f} |" for proc, mb in b["peak_rss_mb"].items()]
    lines += ["", "## Settings and notes", ""]
    for b in doc["benchmarks"]:
        settings = ", ".join(f"{k}={fmt(val)}" for k, val in b["settings"].items())
        lines.append(f"- **{b['name']}** ({b['seconds']:.0f} s): {settings}")
        lines += [f"  - {n}" for n in b["notes"]]
    return "\n".join(lines) + "\n"


def docs_block(doc: dict[str, Any]) -> str:
    """A docs page's `bench` block: the line naming the command, then bench.md (the machine,
    versions and load it names are the run's)."""
    line = ran_line(doc["command"], started=doc["started"], seconds=doc["total_seconds"])
    return line + "\n\n" + embed(render_markdown(doc), level=3)


def write(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write `out` (JSON) and the markdown beside it (same stem, .md). Returns both paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md.write_text(render_markdown(doc), encoding="utf-8")
    return out, md


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: a value that could not be measured is null."""
    return x if x is not None and math.isfinite(x) else None
