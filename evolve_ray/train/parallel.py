"""Data parallelism for the trainer: DDP (gloo on CPU, NCCL on GPU) or FSDP2 `fully_shard`.

Everything here is collective-aware plain torch (no ray): loading the models in the trainer's
dtypes, wrapping, gradient-sync control for accumulation, gathering the full state dict (and
casting it to the inference dtype), and reducing metrics across ranks.

Precision: the trainer holds float32 master weights and optimizer state whatever dtype a
checkpoint is stored in (in bf16, a small AdamW update rounds away: at lr 5e-7 one step moved
0.5% of the shipped policy's parameters in bf16 against 91.8% in fp32). training.bf16 makes the
compute bf16 (FSDP2 MixedPrecisionPolicy here, autocast under DDP in train/step.py); checkpoints
and weight pushes are written in the inference dtype, model.dtype.

LoRA (training.lora.rank > 0): the base is frozen and held in the compute dtype, the adapter is
the float32 master (models/lora.py); the fixed reference is the same model with its adapter
switched off (`AdapterOff`), so no second model is held; and only the adapter is gathered.
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

from evolve_ray.config import Config, TrainingConfig
from evolve_ray.models.loading import DTYPES, load_policy
from evolve_ray.models.lora import attach, split_policy

Metrics = dict[str, float]


def compute_dtype(cfg: TrainingConfig) -> str:
    return "bfloat16" if cfg.bf16 else "float32"


def load_trainable(path: str, cfg: Config) -> PreTrainedModel:
    """The policy to train, whatever dtype the checkpoint at `path` is stored in.

    Full fine-tuning: every weight in float32 (the master weights; AdamW keeps its state in their
    dtype). LoRA: the base frozen in the compute dtype (every matmul reads it in that dtype anyway)
    under a float32 adapter, new or, when `path` is a LoRA checkpoint, the saved one on its base.
    """
    trc = cfg.model.trust_remote_code
    if not cfg.training.lora.rank:
        return load_policy(path, dtype="float32", trust_remote_code=trc)
    base, adapter = split_policy(path)
    model = load_policy(base, dtype=compute_dtype(cfg.training), trust_remote_code=trc)
    return cast(PreTrainedModel, attach(model, cfg.training.lora, adapter))  # a PeftModel forwards the rest


class AdapterOff(torch.nn.Module):
    """The base under a LoRA policy: the policy's own forward with its adapter switched off.

    The fixed reference of a LoRA run (the run starts from the base: a new adapter is zero), at no
    memory cost. `policy` is the unwrapped model (FSDP2 shards in place, so this is still the
    sharded module). A registered child: eval()/train() and `reshard` reach the policy.

    peft's disable_adapter() also turns the adapter's requires_grad off while it lasts. FSDP2 reads
    requires_grad at its first forward to fix each group's gradient reduce dtype: a first forward
    in here (the fixed reference runs first) left the adapter's gradients in bf16, refused by its
    fp32 parameters at the first backward. So the flags are set back for the forward, which runs
    under no_grad (frozen log-probs) and so records nothing either way.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.adapter = [p for p in policy.parameters() if p.requires_grad]

    def forward(self, *args: object, **kwargs: object) -> object:
        with self.policy.disable_adapter():  # type: ignore[operator]  # a PeftModel's context manager
            for p in self.adapter:
                p.requires_grad_(True)
            return self.policy(*args, **kwargs)


def load_reference(path: str, cfg: Config) -> PreTrainedModel:
    """The frozen reference model (training.reference=fixed), held in the compute dtype.

    It only runs forwards, in the same compute dtype as the policy. Under training.bf16 every
    matmul reads bf16 weights anyway (FSDP2 casts the policy's shards to bf16; autocast casts
    at each matmul), so holding the reference in bf16 halves its memory and loses next to
    nothing the policy's forward keeps (under FSDP2 nothing: both run on the same bf16 values).
    In fp32 compute it stays fp32, so that policy and reference give equal log-probs where their
    weights are equal (a zero margin at the first step, not rounding noise). Not model.dtype: a
    float16 copy under bf16 compute would round twice, and under fp32 compute it would make the
    first step's margins bf16/fp16 rounding noise.
    """
    model = load_policy(path, dtype=compute_dtype(cfg.training), trust_remote_code=cfg.model.trust_remote_code)
    return model.requires_grad_(False)


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


def reshard(model: torch.nn.Module) -> None:
    """Free FSDP2's unsharded parameters after forwards with no backward (a no-op under DDP).

    FSDP2 leaves the root module's parameters unsharded after its forward, for the backward it
    expects next. After a no_grad forward (frozen log-probs) they stay registered on the module,
    and the next step's gradients never reach the sharded parameters: without this the optimizer
    never moved the root's own parameters (embeddings, final norm, LM head) while the blocks
    trained (seen with torch 2.13 on one gloo rank; tests/unit/test_fsdp_cpu.py catches it).
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def grad_sync(model: torch.nn.Module, *, sync: bool) -> Iterator[None]:
    """All-reduce gradients only on a step's last micro-batch (gradient accumulation), whichever
    wrapper `wrap_model` gave: FSDP2 (fully_shard makes the model an FSDPModule), DDP, or none."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
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


def trainable_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters' whole values on the CPU, by their names in the unwrapped model
    (LoRA: the adapter, never the frozen base). Collective under FSDP (every rank calls it and
    gets the full values; one all-gather per tensor, a few hundred small ones for an 8B model)."""
    out = {}
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            out[name] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu()
    return out


def inference_state(state: dict[str, Tensor], dtype: str) -> dict[str, Tensor]:
    """The gathered state dict in the inference dtype `dtype` (a model.dtype name), the dtype
    checkpoints and weight pushes are written in. Integer buffers keep theirs; a tensor already
    in `dtype` is returned as it is (no copy)."""
    target = DTYPES[dtype]
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}


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
