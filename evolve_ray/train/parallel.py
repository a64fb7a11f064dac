"""Data parallelism for the trainer: DDP (gloo on CPU, NCCL on GPU) or FSDP2 `fully_shard`.

Everything here is collective-aware plain torch (no ray): wrapping, gradient-sync control for
accumulation, gathering the full state dict, and reducing metrics across ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from evolve_ray.config import TrainingConfig

Metrics = dict[str, float]


def wrap_model(
    model: PreTrainedModel, cfg: TrainingConfig, device: torch.device, *, trainable: bool
) -> torch.nn.Module:
    """Move `model` to `device` and wrap it for data parallelism.

    trainable=False (a frozen reference): DDP needs no wrapper (no gradients to average), FSDP
    still shards it so that no GPU holds a full extra copy.
    """
    model.to(device)  # type: ignore[arg-type]  # transformers types `to` for dtypes only
    if trainable and cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.strategy == "fsdp":
        return shard_fsdp(model, bf16=cfg.bf16)
    if not trainable:
        return model
    # Buffers (rotary tables) are deterministic, so there is nothing to broadcast per forward.
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def shard_fsdp(model: PreTrainedModel, *, bf16: bool) -> torch.nn.Module:
    """FSDP2 `fully_shard` per transformer block, then the root; bf16 compute, fp32 reduce."""
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    blocks = set(model._no_split_modules or ())  # Hugging Face names its decoder-layer classes here
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def grad_sync(model: torch.nn.Module, cfg: TrainingConfig, *, sync: bool) -> Iterator[None]:
    """All-reduce gradients only on a step's last micro-batch (gradient accumulation)."""
    if cfg.strategy == "fsdp":
        cast(FSDPModule, model).set_requires_gradient_sync(sync)
        yield
    elif sync or not isinstance(model, DistributedDataParallel):
        yield
    else:
        with model.no_sync():
            yield


def full_state_dict(model: torch.nn.Module, cfg: TrainingConfig) -> dict[str, Tensor]:
    """The whole model's weights in Hugging Face names. Collective under FSDP (every rank calls
    it; rank 0 gets the full CPU copy, the others an empty dict)."""
    if cfg.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, Tensor], state)
    return {k: v.detach() for k, v in unwrap(model).state_dict().items()}


def param_checksum(model: torch.nn.Module) -> float:
    """Sum of this rank's parameter values in float64: equal across DDP ranks when in sync
    (FSDP: of the local shards only)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.detach().double().sum().cpu()
    return float(total)


def reduce_metrics(sums: Metrics, count: int, device: torch.device) -> Metrics:
    """Means over all ranks of count-weighted metric sums (one all-reduce when distributed)."""
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    n = t[-1].item()
    return {k: (t[i].item() / n if n else float("nan")) for i, k in enumerate(keys)}


def sum_over_ranks(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t
