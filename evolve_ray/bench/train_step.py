"""train_step: training tokens/s of the trainer's DPO round (worker.optimise: frozen reference
log-probs, then every optimizer step, on one process) against TRL's DPOTrainer on the same model,
pairs, batch size, learning rate and machine.

Each side lives in its own 2-CPU actor; after one warm-up round each (a fresh process's first
round pays one-off costs, reported apart), the two sides take turns
(so drifting load hits both alike) and the fastest round of each counts. Tokens are the
prompt+response tokens of the chosen and rejected sequences each side itself trained on.

Then the same round with LoRA (training.lora: rank 16 on every projection, the 8B LoRA recipe's)
against full fine-tuning of a 101M-parameter model (where weights, gradients and AdamW state
outweigh the process's own ~0.5 GB), each in a fresh actor, taking turns the same way: tokens/s
and peak memory (each actor's peak RSS, and that peak above the RSS it had before loading the model).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
import time
from typing import Any

import ray
import torch

from evolve_ray.bench.context import GEN_SPEC, PUSH_SPECS, BenchContext, param_count, peak_rss_mb, synthetic_pairs
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.config import Config
from evolve_ray.types import PreferencePair

PAIRS = 16  # 2 optimizer steps a round
REPS = 3
SETTINGS = {"training.loss": "dpo", "training.batch_size": 8}  # lr, beta, max_len: the config defaults
CPUS = 2
LORA_SETS = {"training.lora.rank": 16, "training.lora.alpha": 32}
LORA_SPEC = "100M"  # PUSH_SPECS' model the LoRA comparison trains


@ray.remote(num_cpus=CPUS)
class OursDPO:
    """The trainer's round on one process: the same `optimise` a Ray Train worker runs."""

    def __init__(self, cfg: Config, pairs: list[PreferencePair]) -> None:
        import peft  # noqa: F401  # imported by both the full and the LoRA side: alike baselines
        import psutil

        from evolve_ray.models.loading import load_tokenizer
        from evolve_ray.models.lora import split_policy
        from evolve_ray.train.batching import build_examples
        from evolve_ray.train.parallel import load_trainable
        from evolve_ray.train.worker import Worker

        # The process before the model: what training adds on top of it is what LoRA changes.
        self.rss_before_model_mb = psutil.Process().memory_info().rss / 2**20
        torch.manual_seed(cfg.training.seed)
        tok = load_tokenizer(cfg.model.policy)
        self.examples = build_examples(pairs, tok, cfg.training)
        self.tokens = sum(len(s.ids) for ex in self.examples for p in ex.terms.values() for s in (p.chosen, p.rejected))
        model = load_trainable(cfg.model.policy, cfg)  # as a worker loads it: fp32, or LoRA's base and adapter
        base = split_policy(cfg.model.policy)[0] if cfg.training.lora.rank else ""
        self.worker = Worker(
            cfg=cfg,
            model=model,
            reference=None,
            tokenizer=tok,
            device=torch.device("cpu"),
            rank=0,
            world_size=1,
            last_done=-1,
            run_dir=".",
            lora_base=base,
        )

    def round(self) -> dict[str, float]:
        from evolve_ray.train.worker import optimise

        t0 = time.perf_counter()
        history, _, facts = optimise(self.worker, self.examples, 0, submitted_at=time.time())
        return {
            "seconds": time.perf_counter() - t0,
            "tokens": self.tokens * self.worker.cfg.training.epochs,
            "steps": len(history),
            "frozen_logps_s": facts["train/frozen_logps_seconds"],
        }

    def info(self) -> dict[str, float]:
        peak = peak_rss_mb()
        return {
            "threads": torch.get_num_threads(),
            "peak_rss_mb": peak,
            "peak_above_start_mb": peak - self.rss_before_model_mb,
        }


@ray.remote(num_cpus=CPUS)
class TrlDPO:
    """TRL's DPOTrainer with the trainer's settings; a new DPOTrainer (not timed) for every round."""

    def __init__(self, cfg: Config, pairs: list[PreferencePair]) -> None:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig

        from evolve_ray.models.loading import load_tokenizer

        t = cfg.training
        torch.manual_seed(t.seed)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model.policy)
        self.tok = load_tokenizer(cfg.model.policy)
        self.epochs = t.epochs
        self.dataset = Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": p.prompt}],
                    "chosen": [{"role": "assistant", "content": p.chosen}],
                    "rejected": [{"role": "assistant", "content": p.rejected}],
                }
                for p in pairs
            ]
        )
        self.args = DPOConfig(
            output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
            per_device_train_batch_size=t.batch_size,
            gradient_accumulation_steps=t.grad_accum,
            num_train_epochs=t.epochs,
            learning_rate=t.lr,
            lr_scheduler_type="constant",
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            beta=t.beta,
            max_length=t.max_len,
            optim="adamw_torch",  # the trainer's optimizer (torch AdamW)
            gradient_checkpointing=False,  # off in the trainer too (training.activation_checkpointing)
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=t.seed,
        )

    def round(self) -> dict[str, float]:
        from trl import DPOTrainer

        trainer = DPOTrainer(model=self.model, args=self.args, train_dataset=self.dataset, processing_class=self.tok)
        ds = trainer.train_dataset
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in ds)
        t0 = time.perf_counter()
        trainer.train()
        return {
            "seconds": time.perf_counter() - t0,
            "tokens": tokens * self.epochs,
            "steps": trainer.state.global_step,
        }

    def info(self) -> dict[str, float]:
        return {"threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}


def take_turns(
    sides: dict[str, Any],
) -> tuple[dict[str, float], dict[str, list[dict[str, float]]], dict[str, dict[str, float]]]:
    """A warm-up round each (a fresh process's one-off costs), then REPS rounds taking turns; the
    actors are killed after. Returns (warm-up seconds, the rounds, info()) per side."""
    warm = ray.get([s.round.remote() for s in sides.values()])
    warmup = {name: r["seconds"] for name, r in zip(sides, warm, strict=True)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(REPS):
        for name, side in sides.items():
            runs[name].append(ray.get(side.round.remote()))
    infos = {name: ray.get(side.info.remote()) for name, side in sides.items()}
    for side in sides.values():
        ray.kill(side)
    return warmup, runs, infos


def run(ctx: BenchContext) -> BenchResult:
    paths = ctx.model("gen", GEN_SPEC, reward=True)
    cfg = ctx.config(paths["policy"], paths["reward"], **SETTINGS)
    pairs = synthetic_pairs(PAIRS, ("direct",))
    sides: dict[str, Any] = {"ours": OursDPO.remote(cfg, pairs)}  # type: ignore[attr-defined]  # a @ray.remote class
    if importlib.util.find_spec("trl") is not None:
        sides["trl"] = TrlDPO.remote(cfg, pairs)  # type: ignore[attr-defined]  # a @ray.remote class
    warmup, runs, infos = take_turns(sides)
    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    tps = {name: b["tokens"] / b["seconds"] for name, b in best.items()}
    # Two 2-CPU actors at a time (the bench cluster has 4 logical CPUs): LoRA against a fresh full side.
    big = ctx.model(f"push-{LORA_SPEC}", PUSH_SPECS[LORA_SPEC])["policy"]
    full_cfg, lora_cfg = ctx.config(big, **SETTINGS), ctx.config(big, **SETTINGS, **LORA_SETS)
    _, lora_runs, lora_infos = take_turns(
        {"full": OursDPO.remote(full_cfg, pairs), "lora": OursDPO.remote(lora_cfg, pairs)}  # type: ignore[attr-defined]
    )
    lora_tps = {k: max(r["tokens"] / r["seconds"] for r in rs) for k, rs in lora_runs.items()}
    t = cfg.training
    settings: dict[str, Any] = {
        "model_params_M": param_count(GEN_SPEC) / 1e6,
        "pairs": PAIRS,
        "loss": "dpo (sigmoid)",
        "batch_size": t.batch_size,
        "lr": t.lr,
        "beta": t.beta,
        "max_len": t.max_len,
        "num_cpus_each": CPUS,
        "reference": "round-start policy (ours: one frozen pass; TRL: a reference copy, a forward per step)",
        "reps": REPS,
        **{
            name: best[name] | infos[name] | {"warmup_s": warmup[name], "all_s": [round(r["seconds"], 2) for r in rs]}
            for name, rs in runs.items()
        },
    }
    memory = {f"{name} actor": infos[name]["peak_rss_mb"] for name in sides}
    goal = Goal("ratio", ">=", 1.0)
    rss = {k: info["peak_rss_mb"] for k, info in lora_infos.items()}
    above = {k: info["peak_above_start_mb"] for k, info in lora_infos.items()}
    n = f"{param_count(PUSH_SPECS[LORA_SPEC]) / 1e6:.0f}M"
    lora = [
        Figure(f"DPO tokens/s, {n} params, LoRA r16", lora_tps["lora"], "tok/s", lora_tps["full"], "full fine-tuning"),
        Figure(f"trainer peak RSS, {n} params, LoRA r16", rss["lora"], "MB", rss["full"], "full fine-tuning"),
        Figure(
            f"trainer peak RSS above its start, {n} params, LoRA r16",
            above["lora"],
            "MB",
            above["full"],
            "full fine-tuning",
        ),
    ]
    settings["lora"] = LORA_SETS | {
        "model_params_M": round(param_count(PUSH_SPECS[LORA_SPEC]) / 1e6, 1),
        "tokens_per_s": lora_tps,
        "peak_rss_mb": rss,
        "peak_above_start_mb": above,
    }
    memory |= {f"{name} actor (LoRA comparison)": mb for name, mb in rss.items()}
    if "trl" not in sides:
        return BenchResult(
            "train_step",
            figures=[Figure("DPO training tokens/s", tps["ours"], "tok/s", goal=goal), *lora],
            settings=settings,
            memory_mb=memory,
            notes=["TRL is not installed: `pip install -e .[bench]` (trl) to measure the peer"],
        )
    settings["trl"]["version"] = importlib.metadata.version("trl")
    return BenchResult(
        "train_step",
        figures=[Figure("DPO training tokens/s", tps["ours"], "tok/s", tps["trl"], "TRL DPOTrainer", goal), *lora],
        settings=settings,
        memory_mb=memory,
        notes=[
            "pairs: 'a+b=' questions with 48-character responses; tokens = prompt+response of chosen and rejected",
            f"the first round in a fresh process (not counted) took {warmup['ours']:.1f} s (ours) and "
            f"{warmup['trl']:.1f} s (TRL): one-off kernel and allocator warm-up",
        ],
    )
