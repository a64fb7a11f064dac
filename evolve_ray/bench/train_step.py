"""train_step: training tokens/s of the trainer's DPO round (worker.optimise: frozen reference
log-probs, then every optimizer step, on one process) against TRL's DPOTrainer on the same model,
pairs, batch size, learning rate and machine.

Each side lives in its own 2-CPU actor; after one warm-up round each (a fresh process's first
round pays one-off costs, reported apart), the two sides take turns
(so drifting load hits both alike) and the fastest round of each counts. Tokens are the
prompt+response tokens of the chosen and rejected sequences each side itself trained on.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
import time
from typing import Any

import ray
import torch

from evolve_ray.bench.context import GEN_SPEC, BenchContext, param_count, peak_rss_mb, synthetic_pairs
from evolve_ray.bench.report import BenchResult, Figure, Goal
from evolve_ray.config import Config
from evolve_ray.types import PreferencePair

PAIRS = 16  # 2 optimizer steps a round
REPS = 3
SETTINGS = {"training.loss": "dpo", "training.batch_size": 8}  # lr, beta, max_len: the config defaults
CPUS = 2


@ray.remote(num_cpus=CPUS)
class OursDPO:
    """The trainer's round on one process: the same `optimise` a Ray Train worker runs."""

    def __init__(self, cfg: Config, pairs: list[PreferencePair]) -> None:
        from evolve_ray.models.loading import load_policy, load_tokenizer
        from evolve_ray.train.batching import build_examples
        from evolve_ray.train.worker import Worker

        torch.manual_seed(cfg.training.seed)
        tok = load_tokenizer(cfg.model.policy)
        self.examples = build_examples(pairs, tok, cfg.training)
        self.tokens = sum(len(s.ids) for ex in self.examples for p in ex.terms.values() for s in (p.chosen, p.rejected))
        self.worker = Worker(cfg, load_policy(cfg.model.policy), None, tok, torch.device("cpu"), 0, 1, -1, ".")

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
        return {"threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}


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


def run(ctx: BenchContext) -> BenchResult:
    paths = ctx.model("gen", GEN_SPEC, reward=True)
    cfg = ctx.config(paths["policy"], paths["reward"], **SETTINGS)
    pairs = synthetic_pairs(PAIRS, ("direct",))
    sides: dict[str, Any] = {"ours": OursDPO.remote(cfg, pairs)}  # type: ignore[attr-defined]  # a @ray.remote class
    if importlib.util.find_spec("trl") is not None:
        sides["trl"] = TrlDPO.remote(cfg, pairs)  # type: ignore[attr-defined]  # a @ray.remote class
    warm = ray.get([s.round.remote() for s in sides.values()])  # a fresh process's first round: one-off costs
    warmup = {name: r["seconds"] for name, r in zip(sides, warm, strict=True)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(REPS):
        for name, side in sides.items():
            runs[name].append(ray.get(side.round.remote()))
    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    infos = {name: ray.get(side.info.remote()) for name, side in sides.items()}
    for side in sides.values():
        ray.kill(side)
    tps = {name: b["tokens"] / b["seconds"] for name, b in best.items()}
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
    if "trl" not in sides:
        return BenchResult(
            "train_step",
            figures=[Figure("DPO training tokens/s", tps["ours"], "tok/s", goal=goal)],
            settings=settings,
            memory_mb=memory,
            notes=["TRL is not installed: `pip install -e .[bench]` (trl) to measure the peer"],
        )
    settings["trl"]["version"] = importlib.metadata.version("trl")
    return BenchResult(
        "train_step",
        figures=[Figure("DPO training tokens/s", tps["ours"], "tok/s", tps["trl"], "TRL DPOTrainer", goal)],
        settings=settings,
        memory_mb=memory,
        notes=[
            "pairs: 'a+b=' questions with 48-character responses; tokens = prompt+response of chosen and rejected",
            f"the first round in a fresh process (not counted) took {warmup['ours']:.1f} s (ours) and "
            f"{warmup['trl']:.1f} s (TRL): one-off kernel and allocator warm-up",
        ],
    )
