"""Datasets out of a run directory.

- trl: preference pairs in the conversational prompt/chosen/rejected form that TRL's
  DPOTrainer reads (JSON lines).
- alpaca_eval: the last round's evaluation outputs (final refinement turn) as AlpacaEval's
  JSON list of {instruction, output, generator, dataset}.
- jsonl: every candidate with its lineage, score and selection decision (JSON lines).
Pure: pyarrow and json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write, read_parquet_rows

FORMATS = ("trl", "alpaca_eval", "jsonl")


def _round_files(run: Path, name: str) -> list[Path]:
    files = sorted((run / "rounds").glob(f"r*/{name}"))
    if not files:
        raise UserError(f"{run} has no rounds/*/{name}: is it a run directory with a finished round?")
    return files


def trl_rows(run: Path, kinds: tuple[str, ...] = ("direct", "refine", "keep")) -> list[dict[str, Any]]:
    rows = []
    for p in read_parquet_rows(_round_files(run, "pairs.parquet")):
        if p["kind"] in kinds:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": p["prompt"]}],
                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                    "rejected": [{"role": "assistant", "content": p["rejected"]}],
                    "kind": p["kind"],
                    "round": p["round"],
                    "prompt_id": p["prompt_id"],
                }
            )
    return rows


def alpaca_eval_rows(run: Path) -> list[dict[str, Any]]:
    last = _round_files(run, "eval.parquet")[-1]
    cands = read_parquet_rows([last])
    final: dict[str, dict[str, Any]] = {}
    for c in cands:
        if c["chain"] == 0 and (c["prompt_id"] not in final or c["turn"] > final[c["prompt_id"]]["turn"]):
            final[c["prompt_id"]] = c
    name = f"evolve_ray/{run.name}/{last.parent.name}"
    return [
        {"instruction": c["question"], "output": c["text"], "generator": name, "dataset": "evolve_ray_eval"}
        for _, c in sorted(final.items())
    ]


def export(run: Path, fmt: str, out: Path) -> int:
    """Write the export; returns the number of records."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}")
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    if fmt == "trl":
        rows = trl_rows(run)
    elif fmt == "jsonl":
        rows = read_parquet_rows(_round_files(run, "candidates.parquet"))
    else:
        rows = alpaca_eval_rows(run)
        atomic_write(out, json.dumps(rows, indent=1, ensure_ascii=False).encode())
        return len(rows)
    atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return len(rows)
