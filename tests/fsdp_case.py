"""The FSDP2 training case shared by the CPU (gloo) and GPU (NCCL, bf16) tests: the same step
code the Ray workers run, on a tiny model, in a one-rank process group the caller opened."""

from __future__ import annotations

import dataclasses

import torch
from torch.distributed.tensor import DTensor

from evolve_ray.config import TrainingConfig
from evolve_ray.models.loading import load_policy, load_tokenizer
from evolve_ray.train.batching import build_examples, loss_terms, plan_epoch, reference_chunks
from evolve_ray.train.parallel import full_state_dict, wrap_model
from evolve_ray.train.step import build_optimizer, optimizer_step, round_frozen_logps
from tests.pairs import fact_pairs

FACTS = [("2+2=", "4", "5"), ("3+3=", "6", "9"), ("capital of France?", "Paris", "Rome"), ("1+1=", "2", "11")]


def fsdp_steps_lower_the_loss(path: str, device: torch.device, reference: str, **overrides) -> None:
    """Ten epochs of EVOLVE steps under FSDP2: parameters are DTensors, the frozen reference
    log-probs stay fixed, the loss falls, and the gathered state dict is fp32 on the CPU."""
    cfg = dataclasses.replace(
        TrainingConfig(),
        loss="evolve",
        gamma=0.0,  # the case's pairs are direct + refine
        reference=reference,
        strategy="fsdp",
        activation_checkpointing=True,
        batch_size=4,
        grad_accum=2,
        epochs=10,
        lr=1e-3,
        **overrides,
    )
    tok = load_tokenizer(path)
    model = wrap_model(load_policy(path), cfg, device, trainable=True)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    ref = (
        wrap_model(load_policy(path).requires_grad_(False), cfg, device, trainable=False)
        if reference == "fixed"
        else None
    )
    examples, terms = build_examples(fact_pairs(FACTS), tok, cfg), loss_terms(cfg)
    chunks = reference_chunks(len(examples), micro_batch=2, rank=0, world_size=1)
    frozen = round_frozen_logps(model, ref, examples, terms, cfg, chunks=chunks, pad_id=tok.pad_token_id, device=device)
    assert frozen.ref is not None and torch.isfinite(frozen.ref).all()
    ref_before = frozen.ref.clone()
    plans = [
        p
        for e in range(cfg.epochs)
        for p in plan_epoch(len(examples), batch_size=4, grad_accum=2, rank=0, world_size=1, seed=0, round=0, epoch=e)
    ]
    opt, sched = build_optimizer(model, cfg, len(plans))
    model.train()
    history = [
        optimizer_step(
            model, opt, sched, p, examples, frozen, terms, cfg, world_size=1, pad_id=tok.pad_token_id, device=device
        )
        for p in plans
    ]
    losses = [h["train/loss"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]
    assert torch.equal(frozen.ref, ref_before)
    state = full_state_dict(model, cfg)
    plain = load_policy(path).state_dict()
    assert state.keys() == plain.keys()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())  # fp32 master weights
    assert any(not torch.equal(state[k], plain[k]) for k in plain)
