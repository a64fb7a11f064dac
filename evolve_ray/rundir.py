"""The run directory: stable names, atomic writes (temporary name, then rename).

    RUN/config.yaml  RUN/state.json  RUN/report.json  RUN/report.md  RUN/plots/
    RUN/rounds/rNNN/{prompts,candidates,pairs}.parquet   (+ part-files journal while running)
    RUN/checkpoints/rNNN/                                 (Hugging Face format)
No ray, no vllm: pyarrow and json only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evolve_ray.errors import UserError


class RunDirError(UserError):
    """The run directory cannot be written (missing permission, disk full, ...)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from e


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue().to_pybytes())


def read_parquet_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in sorted(paths):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


# The evaluation of the starting policy, before round 0: report.json's row with round -1.
START = -1


def round_dir(run: Path, round_: int) -> Path:
    """RUN/rounds/rNNN, or RUN/rounds/start for the starting policy's evaluation (round -1)."""
    return run / "rounds" / ("start" if round_ == START else f"r{round_:03d}")


def checkpoint_dir(run: Path, round_: int) -> Path:
    return run / "checkpoints" / f"r{round_:03d}"


def check_writable(run: Path) -> None:
    """Fail before any actor starts if the run directory cannot be created or written."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run directory {run}: {e.strerror or e}") from e
    probe = run / ".write-probe"
    atomic_write(probe, b"ok")
    probe.unlink()
