"""A node removed from a 2-node cluster while the generators run on it: the Fleet replaces them on
the node that is left, their share of the round is generated there, and the round completes with
every chain exactly once.

The 2-node cluster (ray.cluster_utils.Cluster) cannot share a process with the test session's
cluster, so this module's `main` runs it in a subprocess (`python -m tests.ray.test_node_loss`)
and prints what it saw; the test asserts on that. The generators' placement groups are started on
the node that will be removed (a soft target node), so the scenario is the same every time; Ray
places the groups again on the other node when the first one is gone, and the replacements follow.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from .address_file import address_file_kept
from .cli_process import Driver, cli_env

PROMPTS, TURNS = 16, 2


def main(out: str, policy: str, reward: str) -> None:
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    from evolve_ray.config import load_config
    from evolve_ray.driver import fleet, loop

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "include_dashboard": False, "object_store_memory": 300 << 20},
    )
    doomed = cluster.add_node(num_cpus=1, object_store_memory=300 << 20)  # room for the 2 generators only
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    head = cluster.head_node.node_id

    real, first = fleet.placement_group, iter(range(2))

    def on_doomed_node(bundles, **kw):  # test scaffolding: where the generators start (the fault below is real)
        # The Fleet makes the generators' placement groups first, one per generator. Ray places
        # the bundles of a group again on the node that is left when theirs is removed.
        if next(first, None) is not None:
            kw["_soft_target_node_id"] = doomed.node_id
        return real(bundles, **kw)

    fleet.placement_group = on_doomed_node
    cfg = load_config(
        None,
        [
            f"run.out={out}",
            f"model.policy={policy}",
            f"model.reward={reward}",
            "run.rounds=1",
            f"data.prompts_per_round={PROMPTS}",
            "data.eval_prompts=2",
            "run.eval_turns=1",
            f"generation.turns={TURNS}",
            "generation.backend=transformers",  # prompt by prompt: still generating when the node goes
            "generation.num_generators=2",
            "training.batch_size=4",
        ],
    )
    box: list = []
    t = threading.Thread(target=lambda: box.append(loop.run(cfg)), daemon=True)
    t.start()
    deadline = time.time() + 600
    while time.time() < deadline:  # generation under way: some candidates in the buffer
        try:
            if ray.get(ray.get_actor("buffer").summary.remote())["buffer/candidates"] >= 4:
                break
        except (ValueError, RuntimeError, ray.exceptions.RayError):
            pass
        time.sleep(0.05)
    before = {
        a["ActorID"]: (a["Name"], a["Address"]["NodeID"]) for a in state.actors().values() if a["State"] == "ALIVE"
    }
    cluster.remove_node(doomed, allow_graceful=False)
    t.join(timeout=900)
    after = {a["ActorID"]: (a["Name"], a["Address"]["NodeID"]) for a in state.actors().values()}
    result = {
        "finished": bool(box),
        "head": head,
        "doomed": doomed.node_id,
        "before": before,
        "replacements": [v for k, v in after.items() if k not in before and v[0].startswith("generator-")],
    }
    print("RESULT " + json.dumps(result), flush=True)
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def keep_ray_current_cluster():
    """cluster_utils records its head in the machine's address file: put back what was there."""
    with address_file_kept():
        yield


def test_generators_move_off_a_removed_node(tiny_models, tmp_path: Path, keep_ray_current_cluster) -> None:
    run = tmp_path / "run"
    args = [str(run), str(tiny_models["policy"]), str(tiny_models["reward"])]
    d = Driver(args, tmp_path / "driver.log", cli_env(), module="tests.ray.test_node_loss")
    try:
        assert d.wait(timeout=1200) == 0, d.output()[-3000:]
    finally:
        d.cleanup()
    (line,) = [x for x in d.output().splitlines() if x.startswith("RESULT ")]
    res = json.loads(line.removeprefix("RESULT "))
    assert res["finished"], d.output()[-3000:]
    placed = dict(res["before"].values())
    assert placed["generator-0"] == placed["generator-1"] == res["doomed"]  # the scenario held
    assert all(node == res["head"] for name, node in res["before"].values() if not name.startswith("generator-"))
    # A replacement Ray placed before it knew the node was gone dies too and is replaced again:
    # each generator's work ends up on the node that is left.
    assert {name for name, node in res["replacements"] if node == res["head"]} == {"generator-0", "generator-1"}

    cands = pd.read_parquet(run / "rounds" / "r000" / "candidates.parquet")
    assert cands["id"].is_unique and cands["prompt_id"].nunique() == PROMPTS
    assert cands.groupby("prompt_id").size().eq(TURNS + 1).all()
    assert pd.read_parquet(run / "rounds" / "r000" / "pairs.parquet")["id"].is_unique
    start, row = json.loads((run / "report.json").read_text())["rounds"]  # the start row, then round 0
    assert start["round"] == -1
    assert row["fault/generator_restarts"] >= 1
    assert (run / "checkpoints" / "r000" / "model.safetensors").is_file()  # the round went on to train


if __name__ == "__main__":
    main(*sys.argv[1:])
