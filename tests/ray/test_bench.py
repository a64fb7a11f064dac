"""`evolve-ray bench --only push` (smallest size, one generator, one rep) on the session's cluster."""

from __future__ import annotations

import json

import pytest
import ray

from evolve_ray.cli import main


def test_bench_push_smoke_writes_the_ratio_to_a_copy_measured_in_the_same_run(ray_cluster, tmp_path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "push", "--smoke", "--out", str(out)]) == 0
    assert ray.is_initialized()  # a joined cluster is left running
    doc = json.loads(out.read_text())
    (push,) = doc["benchmarks"]
    assert push["name"] == "push" and push["error"] == ""
    (fig,) = push["figures"]  # 10M parameters into 1 generator
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
