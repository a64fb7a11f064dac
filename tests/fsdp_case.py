"""Training cases shared by the CPU (gloo) and GPU (NCCL) tests: the same loading and step code
the Ray workers run, on a tiny model, in a one-rank process group the caller opened. Torch only:
nothing here (nor in what it imports) imports ray or vllm, so the GPU checks run without them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from evolve_ray.config import Config, TrainingConfig, load_config
from evolve_ray.models.loading import load_policy, load_tokenizer
from evolve_ray.models.tiny import TinySpec, build_policy, build_tokenizer, save
from evolve_ray.train.batching import Example, build_examples, loss_terms, plan_epoch, reference_chunks
from evolve_ray.train.parallel import full_state_dict, load_reference, load_trainable, wrap_model
from evolve_ray.train.step import FrozenLogps, build_optimizer, optimizer_step, round_frozen_logps
from tests.pairs import fact_pairs

FACTS = [("2+2=", "4", "5"), ("3+3=", "6", "9"), ("capital of France?", "Paris", "Rome"), ("1+1=", "2", "11")]


def optimizer_steps(
    model: torch.nn.Module,
    cfg: TrainingConfig,
    examples: list[Example],
    frozen: FrozenLogps,
    terms: tuple[str, ...],
    *,
    epochs: int,
    grad_accum: int,
    pad_id: int,
    device: torch.device,
    limit: int | None = None,
) -> tuple[list[dict[str, float]], torch.optim.Optimizer]:
    """The optimizer steps of `epochs` epochs (batch 4, one rank; the first `limit` of them), as a
    worker runs them: each step's metrics, and the optimizer."""
    plans = [
        p
        for e in range(epochs)
        for p in plan_epoch(
            len(examples), batch_size=4, grad_accum=grad_accum, rank=0, world_size=1, seed=0, round=0, epoch=e
        )
    ][:limit]
    opt, sched = build_optimizer(model, cfg, len(plans))
    model.train()
    history = [
        optimizer_step(
            model=model,
            optimizer=opt,
            scheduler=sched,
            plan=p,
            examples=examples,
            frozen=frozen,
            terms=terms,
            cfg=cfg,
            world_size=1,
            pad_id=pad_id,
            device=device,
        )
        for p in plans
    ]
    return history, opt


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
    run_cfg = dataclasses.replace(load_config(None, [f"model.policy={path}"]), training=cfg)
    model = wrap_model(load_trainable(path, run_cfg), cfg, device, trainable=True)
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in model.parameters())
    ref = None
    if reference == "fixed":  # held in the compute dtype, sharded with the policy's mixed precision
        ref = wrap_model(load_reference(path, run_cfg), cfg, device, trainable=False)
        assert {p.dtype for p in ref.parameters()} == {torch.bfloat16 if cfg.bf16 else torch.float32}
    examples, terms = build_examples(fact_pairs(FACTS), tok, cfg), loss_terms(cfg)
    chunks = reference_chunks(len(examples), micro_batch=2, rank=0, world_size=1)
    frozen = round_frozen_logps(model, ref, examples, terms, cfg, chunks=chunks, pad_id=tok.pad_token_id, device=device)
    assert frozen.ref is not None and torch.isfinite(frozen.ref).all()
    ref_before = frozen.ref.clone()
    history, _ = optimizer_steps(
        model, cfg, examples, frozen, terms, epochs=cfg.epochs, grad_accum=2, pad_id=tok.pad_token_id, device=device
    )
    losses = [h["train/loss"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]
    assert torch.equal(frozen.ref, ref_before)
    state = full_state_dict(model, cfg)
    plain = load_policy(path).state_dict()
    assert state.keys() == plain.keys()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())  # fp32 master weights
    # Every tensor trained, the root module's own (embeddings, final norm, LM head) included.
    unchanged = [k for k in plain if torch.equal(state[k], plain[k])]
    assert not unchanged, f"tensors the steps never moved: {unchanged}"


def save_bf16_policy(out: Path) -> Path:
    """The tiny policy stored in bfloat16 (safetensors and config.json), with its tokenizer."""
    tokenizer = build_tokenizer()
    path = save(build_policy(TinySpec(), tokenizer).to(torch.bfloat16), tokenizer, out)
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    return path


def _full_params(model: torch.nn.Module) -> dict[str, Tensor]:
    """Every parameter's whole value, detached on the CPU (FSDP2: gathered from the shards)."""
    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
        for n, p in model.named_parameters()
    }


def _train_steps(
    model: torch.nn.Module, tcfg: TrainingConfig, examples: list[Example], pad_id: int, device: torch.device, steps: int
) -> tuple[list[dict[str, float]], torch.optim.Optimizer]:
    """`steps` optimizer steps (batch 4, one rank) after the round's frozen log-probs, as a worker runs them."""
    terms = loss_terms(tcfg)
    chunks = reference_chunks(len(examples), micro_batch=4, rank=0, world_size=1)
    frozen = round_frozen_logps(model, None, examples, terms, tcfg, chunks=chunks, pad_id=pad_id, device=device)
    return optimizer_steps(
        model, tcfg, examples, frozen, terms, epochs=steps, grad_accum=1, pad_id=pad_id, device=device, limit=steps
    )


def _config(path: str, *sets: str) -> Config:
    return load_config(None, [f"model.policy={path}", "training.loss=evolve", "training.batch_size=4", *sets])


SMALL_LR = 5e-7


def small_lr_step_changed_fraction(path: str, device: torch.device, strategy: str) -> float:
    """One AdamW step at lr 5e-7 with bf16 compute on a policy loaded as the trainer loads it.

    Asserts that the master weights and AdamW's moments are float32 after the step; returns the
    fraction of parameter elements the step changed, the input embedding left out (rows of tokens
    absent from the batch get no gradient, so they stay put in any dtype).
    """
    cfg = _config(
        path, "model.dtype=bfloat16", "training.bf16=true", f"training.strategy={strategy}", f"training.lr={SMALL_LR}"
    )
    tok = load_tokenizer(path)
    model = wrap_model(load_trainable(path, cfg), cfg.training, device, trainable=True)
    before = _full_params(model)
    examples = build_examples(fact_pairs(FACTS), tok, cfg.training)
    _, opt = _train_steps(model, cfg.training, examples, tok.pad_token_id, device, steps=1)
    after = _full_params(model)
    assert {p.dtype for p in after.values()} == {torch.float32}, "master weights"
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}, "AdamW state"
    names = [n for n in after if "embed_tokens" not in n]
    changed = sum(int((after[n] != before[n]).sum()) for n in names)
    return changed / sum(after[n].numel() for n in names)


def fsdp_bf16_losses_match_fp32(path: str, device: torch.device, steps: int = 4) -> tuple[list[float], list[float]]:
    """Per-step losses of `steps` EVOLVE steps at lr 1e-3 from the same start: FSDP2 with bf16
    compute over fp32 masters on `device`, and plain fp32 (no wrapper) on the CPU. The first
    step's policy is its own reference (a loss of log 2 + 1/2 in both); the later steps compare
    forwards of trained weights. Also asserts the FSDP2 masters and gathered state are fp32.

    Returns:
        (bf16 FSDP2 losses, fp32 CPU losses), one per step.
    """
    tok = load_tokenizer(path)
    runs = {}
    for name, sets, dev in (
        ("bf16", ["training.strategy=fsdp", "training.bf16=true"], device),
        ("fp32", ["training.strategy=ddp", "training.bf16=false"], torch.device("cpu")),
    ):
        cfg = _config(path, "training.lr=1e-3", *sets)
        model = load_trainable(path, cfg)
        model = wrap_model(model, cfg.training, dev, trainable=True) if name == "bf16" else model.to(dev)
        examples = build_examples(fact_pairs(FACTS), tok, cfg.training)
        history, _ = _train_steps(model, cfg.training, examples, tok.pad_token_id, dev, steps)
        runs[name] = [h["train/loss"] for h in history]
        if name == "bf16":
            assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in model.parameters())
            assert {v.dtype for v in full_state_dict(model, cfg.training).values()} == {torch.float32}
    return runs["bf16"], runs["fp32"]
