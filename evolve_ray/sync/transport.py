"""Weight transport: how a trainer's new weights reach the generators.

One small interface, two transports (config `sync.transport`):
- object_store: the state dict's tensors as numpy arrays, put once in the Ray object store; every
  generator on the node reads them in place, without a copy (CPU / single node).
- disk: the checkpoint directory on shared storage; generators read its safetensors files.
The payload holds numpy arrays, not torch tensors: Ray hands numpy arrays to their readers
straight from shared memory (torch tensors would be pickled and copied). No ray import here:
the caller puts the payload into the object store.

A LoRA run pushes only the adapter (training.lora): the same payload with the adapter's tensors
in PEFT names and its adapter_config.json text; `adapter_dir` gives the generator a PEFT
directory to load it from (the checkpoint itself on disk, or one written from the payload).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@dataclass(frozen=True)
class WeightPayload:
    """What travels to a generator: the tensors as (name, torch dtype, array), or a checkpoint
    directory. bfloat16, which numpy lacks, travels as its 16-bit pattern (int16).
    `adapter_config`: a LoRA adapter's adapter_config.json text ("" for full weights)."""

    version: int
    transport: str
    tensors: tuple[tuple[str, str, np.ndarray], ...] = ()
    path: str | None = None
    adapter_config: str = ""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, _, a in self.tensors)


def pack(
    state_dict: Mapping[str, torch.Tensor],
    *,
    version: int,
    transport: str,
    path: str | None = None,
    adapter_config: str = "",
) -> WeightPayload:
    """Trainer side: turn a full (gathered) state dict, or a LoRA adapter's tensors with its
    `adapter_config` text, into a payload for `transport`."""
    if transport == "object_store":
        tensors = tuple((k, str(t.dtype).removeprefix("torch."), _as_array(t)) for k, t in state_dict.items())
        return WeightPayload(version=version, transport=transport, tensors=tensors, adapter_config=adapter_config)
    if transport == "disk":
        if path is None:
            raise ValueError("disk transport needs the checkpoint path")
        return WeightPayload(version=version, transport=transport, path=str(path), adapter_config=adapter_config)
    raise ValueError(f"transport {transport!r} is not available here (valid: object_store, disk)")


def unpack(payload: WeightPayload) -> Iterator[tuple[str, torch.Tensor]]:
    """Generator side: the (name, tensor) pairs of a payload, in Hugging Face parameter names."""
    if payload.transport == "object_store":
        # Arrays read from the object store are read-only views of shared memory; torch warns
        # that they are not writable. The engines copy them into their own parameters.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tensors = [(k, _as_tensor(a, dtype)) for k, dtype, a in payload.tensors]
        yield from tensors
    elif payload.transport == "disk":
        files = sorted(Path(payload.path or "").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {payload.path}")
        for f in files:
            yield from load_file(f).items()
    else:
        raise ValueError(f"unknown transport {payload.transport!r}")


def adapter_dir(payload: WeightPayload, weights: Mapping[str, torch.Tensor], scratch: Path) -> str:
    """Generator side: a PEFT adapter directory holding a LoRA payload. disk: the checkpoint
    directory itself; object_store: `weights` (the unpacked payload) and its config written to a
    new directory under `scratch`, named by version (a later load of the same version gets its own)."""
    if not payload.adapter_config:
        raise ValueError("not a LoRA adapter payload")
    if payload.transport == "disk":
        return str(payload.path)
    json.loads(payload.adapter_config)  # fails here, not inside the engine, if it is not JSON
    scratch.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"v{payload.version}-", dir=scratch))
    (out / "adapter_config.json").write_text(payload.adapter_config, encoding="utf-8")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    return str(out)


SCRATCH_PREFIX = "evolve-adapters-"  # + the generator process's pid


def adapter_scratch(root: Path, pid: int) -> Path:
    """Where generator process `pid` writes the adapters pushed to it through the object store,
    after removing those of generator processes on this machine that are gone (a killed actor
    never removes its own)."""
    for old in root.glob(f"{SCRATCH_PREFIX}*"):
        other = old.name.removeprefix(SCRATCH_PREFIX)
        if other.isdigit() and int(other) != pid and not _alive(int(other)):
            shutil.rmtree(old, ignore_errors=True)
    return root / f"{SCRATCH_PREFIX}{pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _as_array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a tensor's memory (no copy for a contiguous CPU tensor)."""
    t = t.detach().to("cpu").contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _as_tensor(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t
