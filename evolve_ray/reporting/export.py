"""Datasets out of a run directory.

- trl: preference pairs in the conversational prompt/chosen/rejected form that TRL's
  DPOTrainer reads (JSON lines).
- alpaca_eval: the last round's evaluation outputs (final refinement turn) as AlpacaEval's
  JSON list of {instruction, output, generator, dataset}.
- jsonl: every candidate with its lineage, score and selection decision (JSON lines).
- adapter, merged (a LoRA run, training.lora): the last round's policy as a directory: the PEFT
  adapter as it is (its base named by absolute path or hub id, so it loads outside the run), or
  base + adapter merged in float32 and cast to model.dtype, a plain Hugging Face checkpoint.
  Both load in transformers and vLLM. The directory gets EXPORT_MARK (the run and checkpoint it
  came from); an existing --out is replaced only when it is empty or holds one.
Pure: pyarrow and json (torch and safetensors for the models).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from evolve_ray.errors import UserError
from evolve_ray.rundir import atomic_write, read_parquet_rows

FORMATS = ("trl", "alpaca_eval", "jsonl")
MODEL_FORMATS = ("adapter", "merged")
EXPORT_MARK = "evolve_ray_export.json"


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


def last_checkpoint(run: Path) -> Path:
    found = sorted((run / "checkpoints").glob("r[0-9][0-9][0-9]"))
    if not found:
        raise UserError(f"{run} has no checkpoints/rNNN: is it a run directory with a trained round?")
    return found[-1]


def export_model(run: Path, fmt: str, out: Path) -> Path:
    """Write the last round's LoRA policy to the directory `out` as `fmt` (MODEL_FORMATS); returns the checkpoint read."""
    from evolve_ray.config import load_config, read_yaml
    from evolve_ray.models.lora import ADAPTER_CONFIG, adapter_base, adapter_config, is_adapter, merge_adapter

    if fmt not in MODEL_FORMATS:
        raise UserError(f"--format must be one of {', '.join(MODEL_FORMATS)}")
    check_replaceable(out)
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    ckpt = last_checkpoint(run)
    if not is_adapter(ckpt):
        raise UserError(f"{ckpt} holds full weights (not a training.lora run): it loads as it is")
    mark = json.dumps({"run": str(run.resolve()), "checkpoint": ckpt.name, "format": fmt}, indent=1) + "\n"
    if fmt == "merged":
        dtype = load_config(None, base=read_yaml(run / "config.yaml")).model.dtype
        merge_adapter(ckpt, out, dtype=dtype)
        (out / EXPORT_MARK).write_text(mark, encoding="utf-8")
        return ckpt
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp)
    config = adapter_config(ckpt) | {"base_model_name_or_path": adapter_base(ckpt)}  # resolved: no longer relative
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (tmp / EXPORT_MARK).write_text(mark, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return ckpt


def check_replaceable(out: Path) -> None:
    """A model export replaces its --out folder: refuse one that is not empty and not an earlier
    export (EXPORT_MARK), which could be a run directory, a base model or a folder of models."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; name a directory for the exported model")
    if any(out.iterdir()) and not (out / EXPORT_MARK).is_file():
        raise UserError(
            f"--out {out} is a directory that is not empty and holds no earlier export ({EXPORT_MARK}), and the "
            "export would replace it; name a new or empty directory"
        )
