"""The Ray Train worker: one long-lived data-parallel rank that trains round after round.

The worker group starts once (~20 s on CPU) and then loops: pull the next round's job from the
coordinator actor, compute frozen log-probs, optimise, save a Hugging Face checkpoint, push the
weights to every generator, report (with LoRA the checkpoint and the push are the adapter alone,
in PEFT format, naming its base). A None job ends the loop. After a restart by Ray Train
(FailureConfig) it resumes from the last reported checkpoint, a small JSON that names the
round and the Hugging Face checkpoint directory (the weights are not copied twice).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import ray.train.torch
import torch
from ray.exceptions import RayActorError
from tqdm import tqdm
from transformers import PreTrainedModel

from evolve_ray.config import Config
from evolve_ray.engines.base import checkpoint_shapes
from evolve_ray.errors import UserError
from evolve_ray.models.loading import load_tokenizer
from evolve_ray.models.lora import ADAPTER_CONFIG, adapter_tensors, base_record, is_adapter, save_adapter, split_policy
from evolve_ray.sync.transport import pack
from evolve_ray.train.batching import Example, build_examples, cut_examples, loss_terms, plan_epoch, reference_chunks
from evolve_ray.train.parallel import (
    AdapterOff,
    full_state_dict,
    inference_state,
    load_reference,
    load_trainable,
    param_checksum,
    trainable_state_dict,
    unwrap,
    wrap_model,
)
from evolve_ray.train.round_job import RoundJob
from evolve_ray.train.step import build_optimizer, optimizer_step, round_frozen_logps

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@dataclass(kw_only=True)
class Worker:
    """What one rank keeps across rounds."""

    cfg: Config
    model: torch.nn.Module
    reference: torch.nn.Module | None
    tokenizer: Any
    device: torch.device
    rank: int
    world_size: int
    last_done: int
    run_dir: str  # the run directory: the resume record names the checkpoint relative to it
    lora_base: str  # LoRA: the base model the adapter trains on (its checkpoints name it); "" otherwise


def resume_point(start_model: str, coordinator: Any, run_dir: str) -> tuple[int, str, dict[str, Any]]:
    """(last completed round, policy path, its metrics) to start from.

    The newest of: Ray Train's latest checkpoint (set after a restart, and on a resumed driver's
    new worker group, which Ray Train restores from RUN/ray_train), the coordinator's last
    completed round (it outlives the worker group; Ray Train registers a reported checkpoint a
    moment later, so a crash right after a report can leave it one round behind), and
    (-1, start_model, {}) for a fresh start. The checkpoint's record names the policy relative to
    the run directory, resolved here against `run_dir`: a moved run resumes on its own files.
    """
    points: list[tuple[int, str, dict[str, Any]]] = [(-1, start_model, {})]
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
        points.append((state["round"], str(Path(run_dir) / state["path"]), state["metrics"]))
    done = ray.get(coordinator.last_completed.remote())
    if done is not None:
        points.append(done)
    point = max(points, key=lambda p: p[0])
    if point[0] >= 0:
        logger.warning("resuming after a restart: round %d done, policy %s", point[0], point[1])
    return point


def build_worker(config: dict[str, Any]) -> tuple[Worker, dict[str, Any]]:
    cfg: Config = config["cfg"]
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    last_done, policy_path, last_metrics = resume_point(config["start_model"], config["coordinator"], config["run_dir"])
    torch.manual_seed(cfg.training.seed)
    # float32 masters whatever model.dtype is (train/parallel.py; with LoRA the adapter's, over a
    # frozen base in the compute dtype); training.bf16 sets the compute dtype.
    model = wrap_model(load_trainable(policy_path, cfg), cfg.training, device, trainable=True)
    reference: torch.nn.Module | None = None
    if cfg.training.reference == "fixed" and cfg.training.loss != "sft":
        reference = fixed_reference(config["reference_model"], model, cfg, device)
    tokenizer = load_tokenizer(config["tokenizer_path"], trust_remote_code=cfg.model.trust_remote_code)
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    base = split_policy(policy_path)[0] if cfg.training.lora.rank else ""
    worker = Worker(
        cfg=cfg,
        model=model,
        reference=reference,
        tokenizer=tokenizer,
        device=device,
        rank=rank,
        world_size=world,
        last_done=last_done,
        run_dir=config["run_dir"],
        lora_base=base,
    )
    return worker, last_metrics


def fixed_reference(path: str, model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """training.reference=fixed: the model at `path` (the run's start), frozen; with LoRA the
    policy itself with its adapter off, which is the start only when the run began from a full
    model (a new adapter is zero)."""
    if not cfg.training.lora.rank:
        return wrap_model(load_reference(path, cfg), cfg.training, device, trainable=False).eval()
    if is_adapter(path):
        raise UserError(
            f"training.reference=fixed with training.lora scores against the base with the adapter off, but the "
            f"run starts from the adapter {path}: start from a full model (evolve-ray export --format merged)"
        )
    return AdapterOff(unwrap(model)).eval()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. config: cfg (Config), start_model, reference_model, tokenizer_path,
    run_dir (paths) and coordinator (actor handle)."""
    logging.basicConfig(level=config["cfg"].run.log_level)
    coordinator = config["coordinator"]
    worker, last_metrics = build_worker(config)
    if worker.rank == 0 and worker.last_done >= 0:
        ray.get(coordinator.resumed.remote(worker.last_done, last_metrics))
    while True:
        job: RoundJob | None = ray.get(coordinator.next_job.remote(worker.last_done))
        if job is None:
            return
        metrics, per_rank = run_round(worker, job)
        report(worker, job, metrics)
        ray.get(coordinator.submit.remote(job.round, worker.rank, per_rank, metrics if worker.rank == 0 else None))
        worker.last_done = job.round


def run_round(w: Worker, job: RoundJob) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one round, save and push. Returns (round metrics, this rank's own facts)."""
    t0 = time.perf_counter()
    tcfg = w.cfg.training
    torch.manual_seed(tcfg.seed + job.round)
    examples = build_examples(ray.get(job.pairs[0]), w.tokenizer, tcfg)
    if cut := cut_examples(examples):
        logger.warning(
            "round %d: %d of %d examples are longer than training.max_len=%d and lose their prompt's start "
            "(or their response's end); raise training.max_len if memory allows",
            job.round,
            cut,
            len(examples),
            tcfg.max_len,
        )
    history, checksums, facts = optimise(w, examples, job.round, submitted_at=job.submitted_at)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sync_s, lost, reached = save_and_push(w, job)
    metrics = (
        round_metrics(history, len(examples))
        | {"train/cut_examples": float(cut)}
        | facts
        | {
            "train/seconds": train_s,
            "train/save_seconds": time.perf_counter() - t1 - sync_s,
            "sync/seconds": sync_s,
            "sync/generators_lost": float(lost),
            "sync/generators_reached": float(reached),
            "policy/version": float(job.round + 1),
        }
    )
    return metrics, {"pid": os.getpid(), "param_checksums": checksums}


def optimise(
    w: Worker, examples: list[Example], round_: int, *, submitted_at: float
) -> tuple[list[dict[str, float]], list[float], dict[str, float]]:
    """Frozen log-probs, then every optimizer step of the round. Returns per-step metrics, this
    rank's parameter checksums before the first step and after the last (once per round: a
    per-step checksum would read every parameter on the hot path), and round facts: train/first_step_delay_s (from
    `submitted_at`, the driver's hand-off of the pairs, to the first optimizer step; wall clocks,
    so across nodes it is as exact as their clock sync), train/frozen_logps_seconds, and the mean
    reference log-prob of the direct chosen responses (a fingerprint of which model the reference
    was)."""
    tcfg = w.cfg.training
    terms = loss_terms(tcfg)
    pad_id = w.tokenizer.pad_token_id
    micro = max(1, -(-tcfg.batch_size // (w.world_size * tcfg.grad_accum)))
    chunks = reference_chunks(len(examples), micro_batch=micro, rank=w.rank, world_size=w.world_size)
    t_frozen = time.perf_counter()
    frozen = round_frozen_logps(
        w.model, w.reference, examples, terms, tcfg, chunks=chunks, pad_id=pad_id, device=w.device
    )
    frozen_s = time.perf_counter() - t_frozen
    plans = [
        plan
        for epoch in range(tcfg.epochs)
        for plan in plan_epoch(
            len(examples),
            batch_size=tcfg.batch_size,
            grad_accum=tcfg.grad_accum,
            rank=w.rank,
            world_size=w.world_size,
            seed=tcfg.seed,
            round=round_,
            epoch=epoch,
        )
    ]
    optimizer, scheduler = build_optimizer(w.model, tcfg, len(plans))
    w.model.train()
    facts = {
        "train/first_step_delay_s": time.time() - submitted_at,  # last pair handed over -> first step
        "train/frozen_logps_seconds": frozen_s,  # the part of that delay spent on frozen log-probs
    }
    history, checksums = [], [param_checksum(w.model)]
    for plan in tqdm(plans, desc=f"round {round_} train", unit="step", disable=w.rank != 0, mininterval=2.0):
        history.append(
            optimizer_step(
                model=w.model,
                optimizer=optimizer,
                scheduler=scheduler,
                plan=plan,
                examples=examples,
                frozen=frozen,
                terms=terms,
                cfg=tcfg,
                world_size=w.world_size,
                pad_id=pad_id,
                device=w.device,
            )
        )
    checksums.append(param_checksum(w.model))
    if history:
        logger.info(
            "round %d: %d steps, loss %.4f -> %.4f",
            round_,
            len(plans),
            history[0]["train/loss"],
            history[-1]["train/loss"],
        )
    if frozen.ref is not None and examples:
        facts["train/ref_chosen_logp"] = frozen.ref[:, 0, 0].mean().item()
    return history, checksums, facts


def round_metrics(history: list[dict[str, float]], num_examples: int) -> dict[str, float]:
    """Means of the per-step metrics, plus the first and last step's loss."""
    out: dict[str, float] = {"train/steps": float(len(history)), "train/examples": float(num_examples)}
    if history:
        out |= {k: sum(h[k] for h in history) / len(history) for k in history[0]}
        out["train/loss_first"] = history[0]["train/loss"]
        out["train/loss_last"] = history[-1]["train/loss"]
    return out


def save_and_push(w: Worker, job: RoundJob) -> tuple[float, int, int]:
    """Gather the trained weights (collective under FSDP), then rank 0 saves the round's checkpoint
    and pushes it: the whole model in the inference dtype, or with LoRA only the adapter.
    Returns push_weights' (seconds, generators lost, generators reached); zeros on other ranks."""
    if w.lora_base:
        state = trainable_state_dict(w.model)  # the adapter alone: the frozen base is never gathered
        if w.rank != 0:
            return 0.0, 0, 0
        tensors = adapter_tensors(unwrap(w.model), state)  # type: ignore[arg-type]  # a PeftModel
        save_lora_checkpoint(w, tensors, job.checkpoint_dir)
        return push_weights(tensors, job, adapter=True)
    state = full_state_dict(w.model, w.cfg.training)  # the fp32 masters
    if w.rank != 0:
        return 0.0, 0, 0
    # Cast once, for the checkpoint and the push alike: both are in the inference dtype.
    state = inference_state(state, w.cfg.model.dtype)
    save_checkpoint(w, state, job.checkpoint_dir)
    return push_weights(state, job)


def save_lora_checkpoint(w: Worker, tensors: dict[str, torch.Tensor], path: str) -> None:
    """The adapter in PEFT format (float32) naming its base, and the tokenizer (models/lora.py)."""
    base = base_record(w.lora_base, path, w.run_dir)
    save_adapter(unwrap(w.model), tensors, path, base=base)  # type: ignore[arg-type]  # a PeftModel
    w.tokenizer.save_pretrained(path)


def save_checkpoint(w: Worker, state: dict[str, torch.Tensor], path: str) -> None:
    """Hugging Face format (safetensors + tokenizer): loadable by transformers and vLLM.

    `state` is in the inference dtype (model.dtype); config.json says so too."""
    Path(path).mkdir(parents=True, exist_ok=True)
    model = cast(PreTrainedModel, unwrap(w.model))  # a DDP/FSDP wrapper's Hugging Face model
    model.save_pretrained(path, state_dict=state)
    # save_pretrained records the dtype of the model's parameters, the float32 masters; rewrite
    # config.json with the dtype its files hold (a copy: the live model's config stays as it is).
    config = copy.deepcopy(model.config)
    config.dtype = w.cfg.model.dtype
    config.save_pretrained(path)
    w.tokenizer.save_pretrained(path)


def push_weights(state: dict[str, torch.Tensor], job: RoundJob, *, adapter: bool = False) -> tuple[float, int, int]:
    """Put the new weights in the object store once; every generator loads them as version round+1.
    `adapter`: `state` is a LoRA adapter (PEFT names), saved with its config in the checkpoint.

    Returns (seconds, generators lost, generators that now serve the new version). A generator that died since the pairs were handed over
    (killed, its node gone) is skipped and counted, not fatal: the driver replaces it with one
    that loads this round's checkpoint. A live generator serving the wrong version is an error."""
    if not job.generators:
        return 0.0, 0, 0
    t0 = time.perf_counter()
    version = job.round + 1
    if adapter:
        config = (Path(job.checkpoint_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8")
        payload = pack(state, version=version, transport=job.transport, path=job.checkpoint_dir, adapter_config=config)
    else:
        saved = checkpoint_shapes(job.checkpoint_dir)  # the names vLLM expects (tied weights saved once)
        missing = sorted(set(saved) - set(state))
        if missing:
            raise RuntimeError(f"checkpoint names not in the model's state dict: {missing[:5]}")
        payload = pack({k: state[k] for k in saved}, version=version, transport=job.transport, path=job.checkpoint_dir)
    ref = ray.put(payload)
    calls = [g.load_weights.remote(ref) for g in ray.get(job.generators[0])]
    served, lost = [], 0
    for i, call in enumerate(calls):
        try:
            served.append(ray.get(call))
        except RayActorError as e:
            lost += 1
            logger.warning("generator %d is gone (%s); the driver replaces it", i, type(e).__name__)
    if any(v != version for v in served):
        raise RuntimeError(f"generators serve versions {served}, expected {version}")
    return time.perf_counter() - t0, lost, len(served)


def report(w: Worker, job: RoundJob, metrics: dict[str, float]) -> None:
    """Every rank reports (a barrier); rank 0 attaches the resume point as a Ray Train checkpoint."""
    if w.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as d:
        # Relative to the run directory (resume_point resolves it): nothing recorded names where the run was.
        state = {"round": job.round, "path": os.path.relpath(job.checkpoint_dir, w.run_dir), "metrics": metrics}
        (Path(d) / STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
