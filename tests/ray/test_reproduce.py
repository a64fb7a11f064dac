"""`evolve-ray reproduce --smoke`: every arm runs through the product path and the table is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

from evolve_ray.comparison import ARMS, arms, columns
from evolve_ray.reproduce import reproduce


def test_smoke_reproduce_writes_the_table(ray_cluster, tmp_path: Path) -> None:
    out = tmp_path / "reproduce"
    reproduce(out, seeds=[0], rounds=1, smoke=True, command="evolve-ray reproduce --smoke")
    result = json.loads((out / "reproduce.json").read_text())
    assert list(result["arms"]) == list(ARMS)
    for name, arm in arms().items():
        (run,) = result["arms"][name]["runs"]
        assert set(columns()) - {"pairs_per_round"} <= set(run), name
        assert all(0.0 <= run[c] <= 1.0 for c in columns() if c.endswith(("_acc", "_improved", "_degraded")))
        if arm.trains:
            assert run["pairs_per_round"] > 0, name  # the round trained on something
            assert (out / name / "seed0" / "run" / "checkpoints" / "r000" / "model.safetensors").is_file()
        assert result["arms"][name]["std"]["direct_acc"] == 0.0  # one seed
    table = (out / "reproduce.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| arm |"))
    assert header == "| arm | " + " | ".join(columns()) + " |"
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(ARMS)
    assert (out / "reproduce.png").stat().st_size > 0
    assert math.isfinite(result["arms"]["sr_sft"]["mean"]["direct_acc"])
