"""Weight payloads and the checks a generator makes before loading one. In the object-store payload
tensors travel as numpy arrays (which Ray hands to readers from shared memory), bfloat16
included, and come back bit for bit."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from evolve_ray.engines.base import WeightLoadError, checkpoint_shapes, validate_weights
from evolve_ray.sync.transport import SCRATCH_PREFIX, WeightPayload, adapter_scratch, pack, unpack


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_object_store_payload_round_trips_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(5, 4, generator=g).to(dtype),
        "norm.weight": torch.randn(4, generator=g).to(dtype),
    }
    payload = pack(state, version=3, transport="object_store")
    # Through pickle protocol 5, as Ray serialises it: arrays become out-of-band buffers.
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == len(state)  # every tensor travels out of band, not inside the pickle
    back = dict(unpack(pickle.loads(data, buffers=buffers)))
    assert list(back) == list(state)
    for name, t in state.items():
        assert back[name].dtype == dtype and torch.equal(back[name], t), name
    assert payload.nbytes == sum(t.numel() * t.element_size() for t in state.values())


def test_pack_makes_no_copy_of_a_contiguous_cpu_tensor() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ((_, dtype, array),) = pack({"w": t}, version=1, transport="object_store").tensors
    assert dtype == "float32" and np.shares_memory(array, t.numpy())


def test_read_only_arrays_unpack_without_a_warning() -> None:
    array = np.ones(3, dtype=np.float32)
    array.flags.writeable = False  # as Ray returns them from the object store
    payload = WeightPayload(version=1, transport="object_store", tensors=(("w", "float32", array),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ((name, t),) = unpack(payload)
    assert not caught, [str(w.message) for w in caught]
    assert name == "w" and torch.equal(t, torch.ones(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_validate_refuses_a_non_finite_value_anywhere(bad: float, dtype: torch.dtype) -> None:
    w = torch.zeros(7, 5, dtype=dtype)
    validate_weights({"w": w}, {"w": (7, 5)})  # finite: accepted
    w[4, 2] = bad
    with pytest.raises(WeightLoadError, match="w: contains NaN or inf"):
        validate_weights({"w": w}, {"w": (7, 5)})


def test_validate_refuses_other_names_or_shapes() -> None:
    with pytest.raises(WeightLoadError, match=r"missing \['b'\], unexpected \['c'\]"):
        validate_weights({"a": torch.zeros(2), "c": torch.zeros(2)}, {"a": (2,), "b": (2,)})
    with pytest.raises(WeightLoadError, match=r"a: shape \(3,\) != served \(2,\)"):
        validate_weights({"a": torch.zeros(3)}, {"a": (2,)})


def test_a_generator_removes_the_adapter_scratch_of_generators_that_are_gone(tmp_path) -> None:
    """A killed generator never removes the adapters written for it; the next generator on the
    machine does, and leaves those of live processes (itself included) alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, live, mine = (tmp_path / f"{SCRATCH_PREFIX}{p}" for p in (gone.pid, os.getppid(), os.getpid()))
    for d in (dead, live, mine, tmp_path / f"{SCRATCH_PREFIX}notapid"):
        (d / "v1-x").mkdir(parents=True)
        (d / "v1-x" / "adapter_model.safetensors").write_bytes(b"0")
    assert adapter_scratch(tmp_path, os.getpid()) == mine
    assert not dead.exists()
    assert live.is_dir() and mine.is_dir() and (tmp_path / f"{SCRATCH_PREFIX}notapid").is_dir()


def test_a_hub_id_is_checked_against_its_files_in_the_hugging_face_cache(tmp_path, tiny_models, monkeypatch) -> None:
    """model.policy as a hub id: a generator checks pushes against the names and shapes of the
    files loading it put in the Hugging Face cache (one file, or an index's shards), as for a
    folder; none found is an error at start, never an empty list that refuses every push."""
    import huggingface_hub.constants
    from safetensors.torch import load_file, save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = checkpoint_shapes(tiny_models["policy"])
    state = {k: v for f in Path(tiny_models["policy"]).glob("*.safetensors") for k, v in load_file(f).items()}
    assert folder and set(folder) == set(state)

    def cached(repo: str, files: dict[str, dict]) -> None:
        root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("c0ffee")
        snapshot = root / "snapshots" / "c0ffee"
        snapshot.mkdir(parents=True)
        shutil.copy(Path(tiny_models["policy"]) / "config.json", snapshot)
        for name, content in files.items():
            if name.endswith(".json"):
                (snapshot / name).write_text(json.dumps(content))
            else:
                save_file(content, str(snapshot / name))

    cached("org/single", {"model.safetensors": state})
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    cached(
        "org/sharded",
        {
            "model.safetensors.index.json": {"weight_map": {k: f for f, ks in shards.items() for k in ks}},
            **{f: {k: state[k] for k in ks} for f, ks in shards.items()},
        },
    )
    assert checkpoint_shapes("org/single") == folder == checkpoint_shapes("org/sharded")
    with pytest.raises(WeightLoadError, match=r"^no safetensors weights found for org/absent \(a folder"):
        checkpoint_shapes("org/absent")
