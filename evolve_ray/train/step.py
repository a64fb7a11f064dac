"""One training step's maths: log-probs of each pair kind, the configured loss, DP-exact scaling.

Frozen log-probs (the reference policy's, and for INPO the round-start policy's) are computed
once, before a round's optimisation, and stored per example as a [N, K, 2] tensor: K pair kinds
(`loss_terms` order), then (chosen, rejected). The policy's log-probs during training use the
same layout, so one function turns either into the loss's inputs. Pure torch: no ray, no vllm.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from evolve_ray.config import TrainingConfig
from evolve_ray.core.logprobs import sequence_logprobs
from evolve_ray.core.losses import LOSSES, PairLogps, dp_scaled_loss
from evolve_ray.train.batching import Example, StepPlan, collate_term
from evolve_ray.train.parallel import grad_sync, reduce_metrics, reshard, sum_over_ranks, unwrap

Metrics = dict[str, float]

# Loss-function metric names -> the project's stable `train/...` keys (others get the prefix).
_RENAMED = {"margin": "train/margin_mean"}


@dataclass(frozen=True)
class FrozenLogps:
    """Log-probs fixed for a round. ref, prev: [N, K, 2] or None (sft needs neither; prev is INPO's)."""

    ref: Tensor | None
    prev: Tensor | None


def needs_rejected(cfg: TrainingConfig) -> bool:
    """SFT trains on chosen responses only; every preference loss scores both."""
    return cfg.loss != "sft"


def autocast(cfg: TrainingConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 compute under DDP (and in one process), on CUDA and CPU alike: matmuls run in bf16
    while the parameters, their gradients and the optimizer state stay float32. FSDP2 casts
    through its MixedPrecisionPolicy instead (train/parallel.py shard_fsdp)."""
    if cfg.bf16 and cfg.strategy == "ddp":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def term_logps(
    model: torch.nn.Module,
    examples: Sequence[Example],
    terms: Sequence[str],
    cfg: TrainingConfig,
    *,
    pad_id: int,
    device: torch.device,
) -> Tensor:
    """Sequence log-probs of every kind of every example: one forward per kind over chosen+rejected.

    Returns:
        [B, K, 2] float32 (chosen, rejected); the rejected column is 0 for sft.
    """
    with_rejected = needs_rejected(cfg)
    out = []
    for term in terms:
        batch = collate_term(examples, term, pad_id=pad_id, with_rejected=with_rejected).to(device)
        with autocast(cfg, device):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logps = sequence_logprobs(logits, batch.input_ids, batch.response_mask, average=cfg.logprob == "mean")
        b = len(examples)
        rejected = logps[b:] if with_rejected else torch.zeros_like(logps)
        out.append(torch.stack([logps[:b], rejected], dim=-1))
    return torch.stack(out, dim=1)


@torch.no_grad()
def frozen_logps(
    model: torch.nn.Module,
    examples: Sequence[Example],
    chunks: Sequence[list[int]],
    terms: Sequence[str],
    cfg: TrainingConfig,
    *,
    pad_id: int,
    device: torch.device,
) -> Tensor:
    """Log-probs of the examples in `chunks` under `model`, without grad, in eval mode.

    An empty chunk runs a forward on example 0 and discards it, so every rank runs the same
    number of forwards (FSDP all-gathers inside each). Rows not in any chunk stay 0: summing
    the ranks' tensors (all-reduce) gives every row exactly once.

    Returns:
        [N, K, 2] float32 on `device`.
    """
    was_training = model.training
    model.eval()
    out = torch.zeros((len(examples), len(terms), 2), dtype=torch.float32, device=device)
    for chunk in chunks:
        rows = chunk or [0]
        logps = term_logps(model, [examples[i] for i in rows], terms, cfg, pad_id=pad_id, device=device)
        if chunk:
            out[torch.tensor(chunk, device=device)] = logps.float()
    reshard(model)  # FSDP2: else the root's parameters would miss the next step's gradients
    model.train(was_training)
    return out


def _columns(t: Tensor | None, k: int) -> tuple[Tensor | None, Tensor | None]:
    return (t[:, k, 0], t[:, k, 1]) if t is not None else (None, None)


def _pairs_by_kind(terms: Sequence[str], pi: Tensor, ref: Tensor | None, prev: Tensor | None) -> dict[str, PairLogps]:
    """[B, K, 2] log-probs (K kinds in `terms` order; chosen, rejected) as the losses' pairs by kind."""
    return {
        term: PairLogps(pi[:, k, 0], pi[:, k, 1], *_columns(ref, k), *_columns(prev, k)) for k, term in enumerate(terms)
    }


def compute_loss(
    cfg: TrainingConfig, terms: Sequence[str], pi: Tensor, *, ref: Tensor | None = None, prev: Tensor | None = None
) -> tuple[Tensor, Metrics]:
    """The per-example loss `cfg.loss` names (`LOSSES`), with the config's hyper-parameters.

    Args:
        cfg: training config (loss and its hyper-parameters).
        terms: the kinds along dim 1 of the tensors (`loss_terms(cfg)`).
        pi: [B, K, 2] policy log-probs (with grad).
        ref: [B, K, 2] reference log-probs; None for sft.
        prev: [B, K, 2] round-start policy log-probs (inpo); None otherwise.

    Returns:
        ([B] per-example loss, metrics from the loss function).
    """
    return LOSSES[cfg.loss](
        _pairs_by_kind(terms, pi, ref, prev),
        beta=cfg.beta,
        alpha=cfg.alpha,
        gamma=cfg.gamma,
        direct_loss=cfg.direct_loss,
        label_smoothing=cfg.label_smoothing,
        eta=cfg.eta,
        tau=cfg.tau_ratio * cfg.eta,
        direct_weight=cfg.sft_direct_weight,
        refine_weight=cfg.sft_refine_weight,
    )


def micro_step(
    *,
    model: torch.nn.Module,
    examples: Sequence[Example],
    rows: list[int],
    frozen: FrozenLogps,
    terms: Sequence[str],
    cfg: TrainingConfig,
    global_count: int,
    world_size: int,
    pad_id: int,
    device: torch.device,
) -> tuple[Tensor, Metrics, int]:
    """Forward one micro-batch and return (loss to backward, metrics, examples counted).

    The loss is scaled with `dp_scaled_loss`, so summing backward() over a step's micro-batches
    and averaging over ranks (DDP/FSDP) gives the gradient of the mean over the step's
    `global_count` examples. Empty `rows` (a rank with nothing in this micro-batch) run example
    0 with weight 0: the rank still joins the gradient all-reduce.
    """
    count = len(rows)
    rows = rows or [0]
    idx = torch.tensor(rows, device=device)
    pi = term_logps(model, [examples[i] for i in rows], terms, cfg, pad_id=pad_id, device=device)
    ref = frozen.ref[idx] if frozen.ref is not None else None
    prev = frozen.prev[idx] if frozen.prev is not None else None
    per_example, loss_metrics = compute_loss(cfg, terms, pi, ref=ref, prev=prev)
    if count == 0:
        per_example = per_example * 0.0
    loss = dp_scaled_loss(per_example, global_count=global_count, world_size=world_size)
    metrics = {_RENAMED.get(k, f"train/{k}"): v for k, v in loss_metrics.items()}
    metrics["train/loss"] = per_example.detach().mean().item()
    return loss, metrics, count


# ----------------------------------------------------------------------------------------------
# Optimiser, schedule, and a round's frozen log-probs and optimizer steps.


def lr_factor(cfg: TrainingConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of cfg.lr at each step: linear warm-up, then constant, linear or cosine to 0."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def build_optimizer(
    model: torch.nn.Module, cfg: TrainingConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters with the round's LR schedule (fresh every round)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total_steps))


def round_frozen_logps(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    examples: Sequence[Example],
    terms: Sequence[str],
    cfg: TrainingConfig,
    *,
    chunks: Sequence[list[int]],
    pad_id: int,
    device: torch.device,
) -> FrozenLogps:
    """A round's frozen log-probs for every example on every rank, before any optimiser step.

    Each rank scores its `chunks` (see `reference_chunks`); an all-reduce sums the shares.
    ref comes from the round-start policy (reference=refresh) or `reference` (fixed: the
    starting model); INPO's prev is always the round-start policy.
    """
    if cfg.loss == "sft":
        return FrozenLogps(ref=None, prev=None)
    ref_model = unwrap(policy) if cfg.reference == "refresh" else reference
    assert ref_model is not None, "reference=fixed needs the reference model"
    ref = sum_over_ranks(frozen_logps(ref_model, examples, chunks, terms, cfg, pad_id=pad_id, device=device))
    prev = None
    if cfg.loss == "inpo":  # config validation makes INPO's reference fixed, so pi_t is a second pass
        prev = sum_over_ranks(frozen_logps(unwrap(policy), examples, chunks, terms, cfg, pad_id=pad_id, device=device))
    return FrozenLogps(ref=ref, prev=prev)


def optimizer_step(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    plan: StepPlan,
    examples: Sequence[Example],
    frozen: FrozenLogps,
    terms: Sequence[str],
    cfg: TrainingConfig,
    world_size: int,
    pad_id: int,
    device: torch.device,
) -> Metrics:
    """Accumulate the plan's micro-batches, clip, step. Returns metrics averaged over all ranks."""
    sums: defaultdict[str, float] = defaultdict(float)
    count = 0
    last = len(plan.micro_batches) - 1
    for i, rows in enumerate(plan.micro_batches):
        with grad_sync(model, sync=i == last):
            loss, metrics, n = micro_step(
                model=model,
                examples=examples,
                rows=rows,
                frozen=frozen,
                terms=terms,
                cfg=cfg,
                global_count=plan.global_count,
                world_size=world_size,
                pad_id=pad_id,
                device=device,
            )
            loss.backward()
        for k, v in metrics.items():
            sums[k] += v * n
        count += n
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
    lr = float(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = reduce_metrics(dict(sums), count, device)
    out["train/grad_norm"] = float(norm.full_tensor() if isinstance(norm, DTensor) else norm.item())
    out["train/lr"] = lr
    return out
