"""Weight transport: how a trainer's new weights reach the generators.

One small interface, three transports (config `sync.transport`):
- object_store: the state dict serialised once as safetensors bytes and put in the Ray object
  store; every generator deserialises it (CPU / single node).
- disk: the checkpoint directory on shared storage; generators read its safetensors files.
- nccl: vLLM's native GPU weight transfer; GPU clusters only (not available on CPU).
Both sides see plain Python values: the payload crosses process boundaries, tensors do not.
No ray import here: the caller puts bytes into the object store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes


@dataclass(frozen=True)
class WeightPayload:
    """What travels to a generator: either safetensors bytes or a checkpoint directory."""

    version: int
    transport: str
    data: bytes | None = None
    path: str | None = None


def pack(
    state_dict: Mapping[str, torch.Tensor], *, version: int, transport: str, path: str | None = None
) -> WeightPayload:
    """Trainer side: turn a full (gathered) state dict into a payload for `transport`."""
    if transport == "object_store":
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        return WeightPayload(version=version, transport=transport, data=save_bytes(tensors))
    if transport == "disk":
        if path is None:
            raise ValueError("disk transport needs the checkpoint path")
        return WeightPayload(version=version, transport=transport, path=str(path))
    raise ValueError(f"transport {transport!r} is not available here (valid on CPU: object_store, disk)")


def unpack(payload: WeightPayload) -> Iterator[tuple[str, torch.Tensor]]:
    """Generator side: the (name, tensor) pairs of a payload, in Hugging Face parameter names."""
    if payload.transport == "object_store":
        assert payload.data is not None
        yield from load_bytes(payload.data).items()
    elif payload.transport == "disk":
        files = sorted(Path(payload.path or "").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {payload.path}")
        for f in files:
            yield from load_file(f).items()
    else:
        raise ValueError(f"unknown transport {payload.transport!r}")
