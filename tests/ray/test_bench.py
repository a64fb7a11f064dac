"""`evolve-ray bench --only push` (smallest size, one generator, one rep) on the session's cluster:
the full push and, beside it, the push of a LoRA adapter of the same model."""

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
