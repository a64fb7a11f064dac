"""`--smoke`: any recipe at toy size on this machine, with only sizes, counts and devices shrunk.

Everything else stays as the recipe has it: the loss and its weights, the strategy and its N and K,
the selection rule, the refinement template, the scorer backend, the weight transport, FSDP and
bf16, the schedule and warm-up, gradient accumulation. The recipe's models and data are replaced by
stand-ins that look like real ones: tiny Llama-3-style models stored in bfloat16 (header tokens in
the chat template, pad == EOS, a reward model built the same way) and small local files in the
recipe's formats (a chat-format prompt file, an UltraFeedback-style preference file). All of it is
written under RUN/smoke, so the run still writes only its run directory. Pure: no ray.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from evolve_ray.config import Config, replace
from evolve_ray.errors import UserError

# The shrunk sizes: a round takes a few minutes on 2 cores.
PROMPTS, EVAL_PROMPTS, ROWS, MAX_NEW_TOKENS, MAX_LEN, KV_MIB = 8, 4, 16, 16, 512, 64


def _sums(n: int, seed: int) -> list[tuple[str, str, str]]:
    """n (question, right answer, wrong answer) triples: small sums a person can check by eye."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        out.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {a + b + rng.randint(1, 9)}."))
    return out


def write_prompt_file(path: Path, n: int = 24, seed: int = 1) -> Path:
    """Chat-format prompts (`messages` with one user turn), as UltraFeedback-style prompt files have."""
    rows = [
        {"id": f"p{seed}-{i}", "messages": [{"role": "user", "content": q}]}
        for i, (q, _, _) in enumerate(_sums(n, seed))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_preference_file(path: Path, n: int = 48) -> Path:
    """UltraFeedback-binarized rows: `prompt` a string, `chosen`/`rejected` [user, assistant] message lists."""

    def chat(q: str, a: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    rows = [
        {"prompt_id": f"u{i}", "prompt": q, "chosen": chat(q, good), "rejected": chat(q, bad)}
        for i, (q, good, bad) in enumerate(_sums(n, 2))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _check(cfg: Config) -> None:
    """A recipe that cannot run this way says why in one line."""
    if cfg.model.trust_remote_code:
        raise UserError("--smoke: the recipe runs its model repository's own code, which a stand-in cannot have")
    if cfg.data.task == "file" and cfg.scoring.kind == "verifier":
        raise UserError(
            "--smoke: the stand-in prompts carry no reference answers, and the recipe scores with a verifier"
        )
    if cfg.data.task == "file" and cfg.data.format not in ("auto", "chat"):
        raise UserError(f"--smoke: stand-in prompts are chat-format; the recipe reads data.format={cfg.data.format}")


def smoke_config(cfg: Config, work: Path) -> Config:
    """`cfg` with sizes, counts and devices shrunk and its models and data replaced by stand-ins in `work`."""
    from evolve_ray.models.tiny import build_tiny_chat

    _check(cfg)
    sections: dict[str, dict[str, Any]] = {
        "model": {"max_model_len": min(cfg.model.max_model_len, MAX_LEN)},
        "data": {"prompts_per_round": min(cfg.data.prompts_per_round, PROMPTS)},
        "generation": {
            "num_generators": 1,
            "cpus_per_generator": 0.5,
            "gpus_per_generator": 0.0,
            "tensor_parallel_size": 1,
            "max_new_tokens": min(cfg.generation.max_new_tokens, MAX_NEW_TOKENS),
            "kv_cache_mib": min(cfg.generation.kv_cache_mib, KV_MIB),
            "enforce_eager": True,
        },
        "scoring": {"num_scorers": 1, "cpus_per_scorer": 0.25, "gpus_per_scorer": 0.0},
        "training": {
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "use_gpu": False,
            "batch_size": 2 * cfg.training.grad_accum,  # one pair per rank per micro-batch
            "max_len": min(cfg.training.max_len, MAX_LEN),
            "warmup_steps": min(cfg.training.warmup_steps, 1),
        },
        "cluster": {"address": "", "num_cpus": 0, "gpu_memory_gib": 0.0},
        "run": {"rounds": min(cfg.run.rounds, 1), "eval_num_samples": min(cfg.run.eval_num_samples, 2)},
    }
    if cfg.data.eval_prompts:
        sections["data"]["eval_prompts"] = min(cfg.data.eval_prompts, EVAL_PROMPTS)
    if cfg.model.policy:  # the recipe's own model: a stand-in that looks like it (the built-in one is tiny already)
        models = build_tiny_chat(work / "models")
        sections["model"] |= {"policy": str(models["policy"]), "reward": str(models["reward"]), "tokenizer": ""}
    if cfg.data.task == "file":
        sections["data"]["path"] = str(write_prompt_file(work / "prompts.jsonl"))
        if cfg.data.eval_path:
            sections["data"]["eval_path"] = str(write_prompt_file(work / "eval_prompts.jsonl", n=8, seed=3))
    if cfg.sft.data:
        sections["sft"] = {
            "data": str(write_preference_file(work / "preferences.jsonl")),
            "eval_prompts": min(cfg.sft.eval_prompts, EVAL_PROMPTS),
            "max_rows": ROWS,
        }
    return replace(cfg, **sections)
