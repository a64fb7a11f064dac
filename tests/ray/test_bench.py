"""`evolve-ray bench --only push` (smallest size, one generator, one rep) on the session's cluster:
the full push and, beside it, the push of a LoRA adapter of the same model; `--docs-page` rewrites
the page's generated block with the table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray

from evolve_ray.cli import main
from evolve_ray.reporting.docs_page import block, embed, markers

ROOT = Path(__file__).resolve().parents[2]


def test_bench_push_smoke_writes_the_ratio_to_a_copy_measured_in_the_same_run(ray_cluster, tmp_path) -> None:
    out = tmp_path / "bench.json"
    page = tmp_path / "docs/benchmarks.md"  # a copy of the docs page, whose block the command rewrites
    page.parent.mkdir()
    shutil.copy(ROOT / "docs/benchmarks.md", page)
    before = page.read_text(encoding="utf-8")
    argv = ["bench", "--only", "push", "--smoke", "--out", str(out), "--docs-page", str(page)]
    assert main(argv) == 0
    assert ray.is_initialized()  # a joined cluster is left running
    doc = json.loads(out.read_text())
    (push,) = doc["benchmarks"]
    assert push["name"] == "push" and push["error"] == ""
    fig, adapter = push["figures"]  # 10M parameters into 1 generator; its rank-16 adapter into a LoRA one
    assert fig["peer_name"] == "1 copy" and fig["value"] > 0 and fig["peer"] > 0
    assert fig["ratio"] == pytest.approx(fig["value"] / fig["peer"])
    assert fig["goal"] is None  # the push goal starts at 100M parameters
    assert push["settings"]["10M_bytes"] > 40e6  # ~10.7M float32 parameters were pushed
    assert min(push["peak_rss_mb"].values()) > 0
    # The generator's own split of one more, profiled load: its parts fit inside the whole.
    split = push["settings"]["10M_load_split_s"]
    assert split["version"] >= 1 and 0 < split["read_validate_s"] and 0 < split["engine_s"]
    assert len(split["engine_top_s"]) == 5 and 0 < sum(split["engine_top_s"].values()) <= split["engine_s"]
    assert any("profiled inside the generator" in n and "the engine's load" in n for n in push["notes"])
    assert doc["machine"]["cpu_count"] >= 1 and doc["versions"]["vllm"] != "not installed"
    assert len(doc["load_avg_start"]) == 3
    assert "| push | push 11M params to 1 generator(s) |" in (tmp_path / "bench.md").read_text()
    # The adapter: 10 blocks x 16 x (4 x (256 + 256) + 3 x (256 + 1024)) = 942_080 float32 values.
    settings = push["settings"]
    assert settings["10M_adapter_params"] == 942_080 and settings["10M_adapter_bytes"] == 4 * 942_080
    assert adapter["name"] == "push LoRA r16 adapter (0.94M params, 3.8 MB) to 1 generator"
    assert adapter["peer_name"] == "full push" and adapter["peer"] == fig["value"] and adapter["value"] > 0
    # The page: its block is this run's bench.md under a line naming the command; the rest is as it was.
    after = page.read_text(encoding="utf-8")
    start, end = markers("bench")
    assert after[: after.index(start)] == before[: before.index(start)]
    assert after[after.index(end) :] == before[before.index(end) :]
    body = block(after, "bench")
    command = f"evolve-ray bench --only push --smoke --docs-page {page} --out {out}"
    assert doc["command"] == command and body.startswith(f"*Written by `{command}`, which ran at ")
    assert body.endswith(embed((tmp_path / "bench.md").read_text(encoding="utf-8"), level=3))
    assert "### evolve_ray bench" in body and "| push | push 11M params to 1 generator(s) |" in body
    assert "| demo |" not in body  # the old table is gone


def test_a_docs_page_without_the_block_is_refused_before_any_benchmark(tmp_path, capsys) -> None:
    page = tmp_path / "page-without-block"
    page.write_text("# Benchmarks\n", encoding="utf-8")
    out = tmp_path / "bench" / "bench.json"
    assert main(["bench", "--only", "push", "--smoke", "--out", str(out), "--docs-page", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evolve-ray: error: ") and "has no generated block 'bench'" in err[-1]
    assert not out.parent.exists()  # nothing ran
