"""The configuration schema: frozen dataclasses, YAML overrides, `--set a.b=c`.

The defaults are the embedded demo (tiny built-in models, the built-in arithmetic task, a local
CPU cluster): `evolve-ray demo` runs them as they are, and recipes for real models override them
(jobs/configs/).

Each default lives in exactly one field below. YAML files and `--set` hold overrides only;
an unknown key, a wrong type, a number that is not finite or a value out of range is a
`ConfigError` that names the key, and so is an option set where the rest of the config gives it
no effect (its field's `applies`, evolve_ray.options; docs/options.md lists them all).
Pure module: no ray, no vllm, no torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from evolve_ray.core.strategies import BEST_OF_N, STRATEGIES, chain_grid
from evolve_ray.errors import UserError
from evolve_ray.options import Expr, all_, any_, has, ignored, is_, not_

# The paper's refinement turn (docs/method.md), for real models (jobs/configs/llama8b_8gpu.yaml sets it).
PAPER_REFINE_TEMPLATE = (
    "Improve the example response to the question below. Make it clearer, more accurate and "
    "step by step, with no irrelevant content. If it is essentially right, polish it; if it is "
    "wrong or off-topic, write a new response.\n"
    "QUESTION: {question}\n"
    "EXAMPLE RESPONSE: {answer}\n"
    "RESPONSE:"
)
# The same structure in ~70 bytes: the demo's byte-level tiny models pay for every character of
# the template in every refinement turn (the paper's is ~330 tokens); the warm start is taught it.
DEMO_REFINE_TEMPLATE = "Improve the example response.\nQUESTION: {question}\nEXAMPLE RESPONSE: {answer}\nRESPONSE:"


# What `evolve-ray demo` and `evolve-ray reproduce` add to the defaults: settings that assume the
# built-in verifiable task. Pairs are chosen by the task's exact checker (the learned reward model
# picks a wrong answer as the best of a chain about half the time: docs/method.md). jobs/configs/demo.yaml
# mirrors it.
DEMO_SETS = ("scoring.kind=verifier",)


class ConfigError(UserError):
    """A user error in the configuration; its message names the offending key."""


def _f(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    gt: float | None = None,
    max: float | None = None,
    lt: float | None = None,
    refused: dict[str, str] | None = None,
    applies: Expr | None = None,
    resume: bool = False,
) -> Any:
    """A dataclass field carrying help text, optional numeric bounds, values refused with a reason, where
    it has an effect (`applies`, evolve_ray.options: None is everywhere), and whether a resume may change it."""
    meta = {
        "help": help,
        "min": min,
        "gt": gt,
        "max": max,
        "lt": lt,
        "refused": refused or {},
        "applies": applies,
        "resume": resume,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    policy: str = _f(
        "", "Policy checkpoint: a local directory or a hub id. Empty: the built-in warm start (a tiny Stage-1 model)."
    )
    reward: str = _f(
        "",
        "Reward model (sequence classification): path or hub id; it scores under scoring.kind=reward_model and picks "
        "best-of-N in evaluation. Empty: the built-in learned one (trained on the built-in task).",
    )
    tokenizer: str = _f(
        "", "Tokenizer path or hub id, for the prompts and the engines alike; empty means the policy's own."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32",
        "Inference dtype: the engines' weights, and the dtype checkpoints and weight pushes are written in. "
        "Training always keeps float32 master weights and optimizer state (training.bf16 sets its compute dtype).",
    )
    max_model_len: int = _f(512, "Context length given to the engines (prompt + response tokens).", min=16)
    trust_remote_code: bool = _f(False, "Allow model repositories to run their own code. Off unless you trust them.")


@dataclass(frozen=True)
class DataConfig:
    task: Literal["arith", "file"] = _f(
        "arith",
        "The built-in addition task, or 'file' to read `path`.",
        refused={
            "gsm8k": "GSM8K is read as a file: data.task=file data.path=openai/gsm8k:main "
            "(its question/answer columns are detected as the gsm8k format)"
        },
    )
    path: str = _f(
        "",
        "Prompt file (json/jsonl/parquet/csv/tsv) or hub dataset id when task=file.",
        applies=is_("data.task", "file"),
    )
    eval_path: str = _f(
        "",
        "Held-out prompts from this file or hub split (read in path's format): data.eval_prompts of its rows, "
        "and every row of path serves the rounds. Empty: the held-out prompts are set aside from path. Set it "
        "when path's prompts overlap Stage 1's (sft.data), e.g. UltraFeedback's train splits.",
        applies=all_(is_("data.task", "file"), not_("data.eval_prompts", 0)),
    )
    format: Literal["auto", "chat", "alpaca", "gsm8k", "columns"] = _f(
        "auto", "Row format of `path` (auto: from the columns present).", applies=is_("data.task", "file")
    )
    prompt_column: str = _f(
        "prompt",
        "Prompt column when format=columns (auto: detected from it when no other format's columns are there).",
        applies=all_(is_("data.task", "file"), is_("data.format", "auto", "columns")),
    )
    answer_column: str = _f(
        "",
        "Reference-answer column when format=columns (empty: none; auto reads `answer` beside `prompt`).",
        applies=all_(is_("data.task", "file"), is_("data.format", "auto", "columns")),
    )
    prompts_per_round: int = _f(512, "Prompts drawn for each round's data collection.", min=1)
    eval_prompts: int = _f(
        500, "Held-out prompts evaluated after every round (500: +-2 points of accuracy).", min=0, resume=True
    )
    fresh_per_round: bool = _f(True, "Draw new prompts each round (False: reuse the same set).")
    seed: int = _f(0, "Seed for the task generator and prompt sampling.")


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["auto", "vllm", "transformers"] = _f("auto", "Inference engine; auto picks vLLM when it imports.")
    num_generators: int = _f(1, "GeneratorActor count; they pull the round's prompts in batches.", min=1, resume=True)
    max_work_batch: int = _f(
        256,
        "Most prompts a generator takes at once: a fair share of the round's unfinished ones, up to this.",
        min=1,
        resume=True,
    )
    cpus_per_generator: float = _f(0.5, "Logical CPUs reserved per generator.", min=0, resume=True)
    gpus_per_generator: float = _f(
        0.0,
        "GPUs reserved per generator (= tensor_parallel_size from one GPU up; the transformers engine runs on CPU).",
        min=0,
        applies=not_("generation.backend", "transformers"),
        resume=True,
    )
    tensor_parallel_size: int = _f(
        1,
        "vLLM tensor parallelism per generator (GPU only: one GPU per rank, so gpus_per_generator equals it).",
        min=1,
        applies=not_("generation.backend", "transformers"),
    )
    strategy: Literal["direct", "parallel", "chain", "parallel_chain", "vote"] = _f(
        "chain",
        "Inference strategy used for data collection (direct and vote make no pairs: they are evaluation "
        "strategies, run.eval_strategies).",
    )
    num_samples: int = _f(
        1,
        "N: independent answers (parallel) or chains (parallel_chain).",
        min=1,
        applies=is_("generation.strategy", "parallel", "parallel_chain"),
    )
    turns: int = _f(
        3,
        "K: refinement turns after the first answer (chain strategies).",
        min=0,
        applies=is_("generation.strategy", "chain", "parallel_chain"),
    )
    temperature: float = _f(
        0.7, "Sampling temperature of data collection (and of sampled strategies in evaluation); 0 is greedy.", min=0
    )
    top_p: float = _f(
        1.0,
        "Nucleus sampling mass (sampled requests only).",
        gt=0,
        max=1,
        applies=any_(not_("generation.temperature", 0.0), not_("run.eval_strategies", [])),
    )
    max_new_tokens: int = _f(8, "Maximum tokens per response (the demo's sums need 4 with EOS).", min=1)
    seed: int = _f(0, "Sampling seed (per request seeds derive from it).")
    kv_cache_mib: int = _f(
        64,
        "vLLM KV cache size in MiB (CPU needs it set explicitly); also the vLLM reward model's.",
        min=1,
        applies=any_(not_("generation.backend", "transformers"), is_("scoring.backend", "vllm")),
    )
    enforce_eager: bool = _f(
        True,
        "Skip graph compilation (saves ~25 s start-up on CPU).",
        applies=not_("generation.backend", "transformers"),
    )


@dataclass(frozen=True)
class RefinementConfig:
    template: str = _f(
        DEMO_REFINE_TEMPLATE,
        "Refinement user turn; must contain {question} and {answer}. The default is the demo's short form "
        "(the built-in warm start was trained on it); real models want config.PAPER_REFINE_TEMPLATE.",
    )
    on_too_long: Literal["truncate_middle", "skip"] = _f(
        "truncate_middle", "Rule for refinement prompts over the context: cut the previous answer's middle, or skip."
    )


@dataclass(frozen=True)
class ScoringConfig:
    kind: Literal["reward_model", "verifier"] = _f(
        "reward_model",
        "Score with a reward model or the task's verifier. Best-of-N in evaluation is always picked by a reward "
        "model (model.reward, or the built-in one on the built-in task), never by the verifier, which grades it.",
    )
    backend: Literal["transformers", "vllm"] = _f(
        "transformers", "Reward-model runner (scoring.kind=reward_model, and best-of-N picks in evaluation)."
    )
    num_scorers: int = _f(1, "ScorerActor count.", min=1, resume=True)
    cpus_per_scorer: float = _f(0.25, "Logical CPUs reserved per scorer.", min=0, resume=True)
    gpus_per_scorer: float = _f(
        0.0,
        "GPUs reserved per scorer: at most 1, one vLLM rank (the transformers scorer runs on CPU).",
        min=0,
        max=1,
        applies=is_("scoring.backend", "vllm"),
        resume=True,
    )
    micro_batch: int = _f(16, "Candidates per reward-model forward pass.", min=1)


@dataclass(frozen=True)
class SelectionConfig:
    rule: Literal["reward", "rule", "verifier", "consistency"] = _f("reward", "How a scored chain becomes pairs.")
    min_margin: float = _f(
        0.0,
        "reward rule: drop prompts whose best-worst margin is at or below this.",
        min=0,
        applies=is_("selection.rule", "reward"),
    )
    min_chosen_score: float | None = _f(
        None,
        "reward rule: drop prompts whose best score is at or below this (null: no floor). Only meaningful for a "
        "reward model with a known scale; the demo sets 0 (its reward model's sign is the verifier's verdict).",
        applies=is_("selection.rule", "reward"),
    )
    tie_tolerance: float = _f(
        1e-6,
        "reward rule: a best-worst spread at or below this is a tie (the prompt gives no pair). The per-turn "
        "reports' unchanged band is run.unchanged_tolerance.",
        min=0,
        applies=is_("selection.rule", "reward"),
    )
    keep_pairs: bool = _f(True, "Also emit keep pairs (t(x, y_w); y_w; y_l): shown a good answer, keep it.")
    consistency_turns: int = _f(
        2,
        "consistency rule: how many final turns must agree (at most generation.turns: turn 0 is what they fix).",
        min=2,
        applies=is_("selection.rule", "consistency"),
    )


# The attention and MLP projections of Llama-, Qwen- and Mistral-style decoders (vLLM serves adapters on all seven).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class LoraConfig:
    """training.lora: low-rank adapters (peft) on a frozen base instead of training every weight."""

    rank: int = _f(
        0,
        "LoRA rank r; 0: LoRA off (every weight trains). On, the trainer trains only the adapters (float32) over "
        "the frozen base held in the compute dtype, the reference is the base with the adapter switched off, and "
        "each round pushes only the adapter (PEFT format) into the generators' engines.",
        min=0,
    )
    alpha: float = _f(16.0, "LoRA alpha: the adapter's update is scaled by alpha / rank.", gt=0)
    dropout: float = _f(0.0, "Dropout on the adapters' input while training (below 1).", min=0)
    target_modules: list[str] = _f(
        LORA_TARGETS,
        "Module names (last name segment) that get adapters; the default is every attention and MLP projection.",
    )


@dataclass(frozen=True)
class TrainingConfig:
    loss: Literal["sft", "dpo", "ipo", "evolve", "inpo"] = _f("evolve", "Training objective.")
    direct_loss: Literal["dpo", "ipo"] = _f(
        "dpo", "evolve: form of the direct term.", applies=is_("training.loss", "evolve")
    )
    beta: float = _f(
        0.5,
        "KL strength of DPO/IPO/EVOLVE (the paper: 0.1; the demo's tiny model needs 0.5).",
        gt=0,
        applies=is_("training.loss", "dpo", "ipo", "evolve"),
    )
    alpha: float = _f(1.0, "evolve: weight of the refinement term.", min=0, applies=is_("training.loss", "evolve"))
    gamma: float = _f(
        1.0,
        "evolve: weight of the keep term (needs selection.keep_pairs).",
        min=0,
        applies=is_("training.loss", "evolve"),
    )
    label_smoothing: float = _f(
        0.0,
        "DPO label smoothing (conservative DPO): the probability that a label is flipped, below 1/2.",
        min=0,
        lt=0.5,
        applies=any_(
            is_("training.loss", "dpo"), all_(is_("training.loss", "evolve"), is_("training.direct_loss", "dpo"))
        ),
    )
    eta: float = _f(0.005, "INPO eta (paper value).", gt=0, applies=is_("training.loss", "inpo"))
    tau_ratio: float = _f(
        1 / 3, "INPO tau = tau_ratio * eta (paper: 1/3).", min=0, applies=is_("training.loss", "inpo")
    )
    sft_direct_weight: float = _f(
        1.0,
        "sft (and Stage 1): weight of -logp(y_w | x).",
        min=0,
        applies=any_(is_("training.loss", "sft"), not_("sft.data", "")),
    )
    sft_refine_weight: float = _f(
        1.0,
        "sft (and Stage 1): weight of -logp(y_w | t(x, y_l)).",
        min=0,
        applies=any_(is_("training.loss", "sft"), not_("sft.data", "")),
    )
    logprob: Literal["sum", "mean"] = _f("sum", "Sequence log-prob: summed or mean per token.")
    reference: Literal["refresh", "fixed"] = _f(
        "refresh", "Reference policy: previous round's, or the start.", applies=not_("training.loss", "sft")
    )
    lr: float = _f(5e-5, "Peak learning rate (AdamW); the demo's tiny model (2e-4 made rounds oscillate).", gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = _f("constant", "Schedule within a round.")
    warmup_steps: int = _f(0, "Linear warm-up steps.", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0)
    epochs: int = _f(2, "Passes over a round's pairs.", min=1)
    batch_size: int = _f(16, "Pairs per optimizer step, across all workers.", min=1)
    grad_accum: int = _f(1, "Micro-batches accumulated per optimizer step.", min=1)
    max_len: int = _f(448, "Longest prompt+response sequence trained on; longer ones are truncated.", min=8)
    max_grad_norm: float = _f(1.0, "Gradient clipping (0 disables).", min=0)
    seed: int = _f(0, "Training seed.")
    num_workers: int = _f(2, "Ray Train workers (data-parallel ranks).", min=1)
    cpus_per_worker: float = _f(0.5, "Logical CPUs per train worker.", min=0)
    use_gpu: bool = _f(False, "Train on GPUs.")
    strategy: Literal["ddp", "fsdp"] = _f(
        "ddp", "Data parallel: DDP or FSDP2 fully_shard (NCCL on GPUs, gloo on CPU, where FSDP is for smoke runs)."
    )
    bf16: bool = _f(
        False,
        "bf16 compute over float32 master weights and optimizer state (FSDP2 MixedPrecisionPolicy; autocast "
        "under DDP), whatever dtype the checkpoint is stored in.",
    )
    activation_checkpointing: bool = _f(False, "Recompute activations in backward (GPU memory saver).")
    max_failures: int = _f(1, "Ray Train FailureConfig: worker-group restarts allowed.", min=0)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class SftConfig:
    """Stage 1: self-refinement-aware SFT on an offline preference set (docs/method.md)."""

    data: str = _f(
        "",
        "Preference file (json/jsonl/parquet/csv/tsv) or hub dataset id: rows of prompt/chosen/rejected as strings "
        "or message lists (UltraFeedback-binarized, TRL's DPO format). Set: `evolve-ray sft` trains on it, and "
        "`evolve-ray run` runs Stage 1 before its rounds. Empty: no Stage 1.",
    )
    eval_prompts: int = _f(
        64,
        "Prompts of the preference set held out (never trained on) and evaluated per turn before and after.",
        min=0,
        applies=not_("sft.data", ""),
    )
    max_rows: int = _f(
        0, "Train on at most this many rows, 2 pairs each (0: all of them).", min=0, applies=not_("sft.data", "")
    )
    epochs: int = _f(1, "Passes over the pairs.", min=1, applies=not_("sft.data", ""))
    lr: float = _f(
        1e-5,
        "Peak learning rate of Stage 1 (the schedule, batch and workers are training.*'s).",
        gt=0,
        applies=not_("sft.data", ""),
    )


@dataclass(frozen=True)
class SyncConfig:
    transport: Literal["object_store", "disk"] = _f(
        "object_store",
        "Weight push: arrays through the Ray object store (one node), or the checkpoint directory read from "
        "shared storage (several nodes).",
        refused={
            "nccl": "vLLM's NCCL weight transfer is not built here; the transports are object_store and disk "
            "(a push takes seconds, next to minutes of generation per round)"
        },
    )


@dataclass(frozen=True)
class ClusterConfig:
    address: str = _f("", "Ray address to join ('auto' for a running cluster); empty starts a local one.", resume=True)
    num_cpus: int = _f(
        0, "Logical CPUs of a local cluster (0: detect).", min=0, applies=is_("cluster.address", ""), resume=True
    )
    dashboard_host: str = _f(
        "127.0.0.1",
        "Dashboard bind address of a local cluster.",
        applies=all_(is_("cluster.address", ""), is_("cluster.include_dashboard", True)),
        resume=True,
    )
    include_dashboard: bool = _f(
        True, "Start the dashboard with a local cluster.", applies=is_("cluster.address", ""), resume=True
    )
    gpu_memory_gib: float = _f(
        0.0,
        "Memory of one GPU, for the memory plan (print-config, and a refusal at start when a role cannot fit); "
        "0: read from the driver's GPU when it has one, else the plan shows needs only.",
        min=0,
        applies=any_(
            not_("generation.gpus_per_generator", 0.0),
            not_("scoring.gpus_per_scorer", 0.0),
            is_("training.use_gpu", True),
        ),
        resume=True,
    )
    placement_timeout_s: float = _f(
        600.0, "Seconds to wait for the cluster to place the generators' and scorers' resources.", min=1, resume=True
    )


@dataclass(frozen=True)
class RunConfig:
    out: str = _f("runs/evolve", "Run directory (the only place the project writes).")
    rounds: int = _f(3, "EVOLVE rounds.", min=0, resume=True)
    eval_strategy: Literal["direct", "chain"] = _f(
        "chain",
        "Strategy of the per-round evaluation (greedy: one chain at temperature 0).",
        applies=not_("data.eval_prompts", 0),
        resume=True,
    )
    eval_turns: int = _f(
        3,
        "Refinement turns evaluated: K of the per-round chain, and of the chain strategies in run.eval_strategies "
        "when no budget chooses it.",
        min=0,
        applies=all_(
            not_("data.eval_prompts", 0),
            any_(
                is_("run.eval_strategy", "chain"),
                all_(has("run.eval_strategies", "chain", "parallel_chain", "vote"), is_("run.eval_budget_tokens", 0.0)),
            ),
        ),
        resume=True,
    )
    eval_strategies: list[str] = _f(
        [],
        "Inference strategies compared on the held-out prompts at the end of the run (direct, parallel, chain, "
        "parallel_chain, vote): accuracy (best-of-N picked by a reward model, never the answer key; pass@N, the "
        "answer key's pick, in its own column), score, generated and prompt tokens per prompt, N, K and "
        "temperature of each, in report.md.",
        resume=True,
    )
    eval_num_samples: int = _f(
        4,
        "N of the parallel strategies in run.eval_strategies when no budget chooses it.",
        min=1,
        applies=all_(has("run.eval_strategies", *BEST_OF_N, "vote"), is_("run.eval_budget_tokens", 0.0)),
        resume=True,
    )
    eval_temperatures: dict[str, float] = _f(
        {},
        "Sampling temperature per compared strategy, e.g. {chain: 0, vote: 0.7}; one not listed: greedy (0) for "
        "direct and chain, generation.temperature for the strategies that sample N answers.",
        applies=not_("run.eval_strategies", []),
        resume=True,
    )
    eval_budget_tokens: float = _f(
        0.0,
        "Compare run.eval_strategies at matched compute: tokens processed per prompt (prompt + generated); each "
        "strategy gets the N and K whose estimated cost (from the round's greedy chain) is closest. 0: no budget "
        "(run.eval_num_samples and run.eval_turns for all).",
        min=0,
        applies=not_("run.eval_strategies", []),
        resume=True,
    )
    eval_strategies_every_round: bool = _f(
        False,
        "Compare run.eval_strategies after every round, not only the last.",
        applies=not_("run.eval_strategies", []),
        resume=True,
    )
    eval_start: bool = _f(
        True,
        "Evaluate the starting policy before round 0 (report row 'start'); false skips it, e.g. when it is known.",
        applies=not_("data.eval_prompts", 0),
        resume=True,
    )
    unchanged_tolerance: float = _f(
        1e-6,
        "Per-turn reports (eval/ and refine/ turn_k_*_frac): a score change within this counts as unchanged.",
        min=0,
    )
    trackers: list[str] = _f([], "Optional trackers: wandb, mlflow, tensorboard.", resume=True)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f(
        "INFO", "Logging level of the console and of the actors.", resume=True
    )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------
# Building a Config from overrides


# A decimal number as people type it: 5e-5, 1e-3, .5, -2, 3.0E+2 (not nan, inf or hex).
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, e.g. {{a: 1}}, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(f"{key} (a key)", k, key_tp): _coerce(f"{key}.{k}", v, value_tp) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 5e-5 and 1e-3 (no dot) as strings; 1e400 reads as inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan, .inf and 1e400 would pass every bound check below
            raise ConfigError(f"{key}: {value} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a schema bug, not a user error


def _check_bounds(key: str, value: Any, f: dataclasses.Field) -> None:
    m = f.metadata
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if m.get("min") is not None and value < m["min"]:
            raise ConfigError(f"{key}: {value} is below the minimum {m['min']}")
        if m.get("gt") is not None and value <= m["gt"]:
            raise ConfigError(f"{key}: {value} must be greater than {m['gt']}")
        if m.get("max") is not None and value > m["max"]:
            raise ConfigError(f"{key}: {value} is above the maximum {m['max']}")
        if m.get("lt") is not None and value >= m["lt"]:
            raise ConfigError(f"{key}: {value} must be below {m['lt']}")


def _build(cls: type, overrides: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        where = f"in '{prefix.rstrip('.')}'" if prefix else "at the top level"
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' {where}; valid keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in overrides.items():
        key, tp = prefix + name, hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            refused = fields[name].metadata.get("refused", {})
            if isinstance(value, str) and value in refused:
                raise ConfigError(f"{key}={value} is not available: {refused[value]}")
            kwargs[name] = _coerce(key, value, tp)
            _check_bounds(key, kwargs[name], fields[name])
    return cls(**kwargs)


def _explicit_keys(cls: type, overrides: dict[str, Any], prefix: str = "") -> set[str]:
    """The option keys an override tree sets ("training.beta", ...), sections expanded."""
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for name, value in overrides.items():
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out |= _explicit_keys(tp, value, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(item: str) -> dict[str, Any]:
    """Turn `a.b=c` into {"a": {"b": c}} with c parsed as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. training.beta=0.05")
    path, raw = item.split("=", 1)
    parts = path.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {path}: cannot parse value {raw!r}: {_yaml_problem(e)}") from None
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what the parser found, and where (PyYAML's own message spans four lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        return f"{e.problem}{where}"
    return " ".join(str(e).split())


def validate(cfg: Config, explicit: frozenset[str] | set[str] = frozenset()) -> Config:
    """Cross-field rules that a single field's type cannot express.

    Args:
        explicit: the keys the user set (YAML or --set; config.load_config): one of them set to a
            value other than its default where the rest of the config gives it no effect is refused
            (evolve_ray.options). A default that does not apply is not an error.
    """
    t = cfg.refinement.template
    for slot in ("{question}", "{answer}"):
        if slot not in t:
            raise ConfigError(f"refinement.template: must contain {slot}")
    if cfg.training.loss == "evolve" and cfg.training.gamma > 0 and not cfg.selection.keep_pairs:
        raise ConfigError("training.gamma > 0 needs selection.keep_pairs=true (no keep pairs otherwise)")
    if cfg.selection.rule == "verifier" and cfg.scoring.kind != "verifier":
        raise ConfigError(
            "selection.rule=verifier needs scoring.kind=verifier (it reads the verifier's 1/0 scores); "
            "with a reward model use selection.rule=reward"
        )
    if cfg.sft.data and cfg.scoring.kind != "reward_model":
        raise ConfigError(
            "sft.data needs scoring.kind=reward_model: Stage 1 is evaluated on the preference file's held-out "
            "prompts, which carry no reference answers for a verifier"
        )
    if cfg.training.loss == "inpo" and cfg.training.reference != "fixed":
        raise ConfigError(
            "training.loss=inpo needs training.reference=fixed: INPO's pi_ref is the starting policy, and with "
            "refresh it equals the previous round's policy and INPO turns into IPO with a 1/(2 eta) margin"
        )
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.path: required when data.task=file")
    _check_collection(cfg)
    _check_engines(cfg)
    _check_task(cfg)
    _check_comparison(cfg, explicit)
    _validate_lora(cfg.training.lora)
    known_trackers = {"wandb", "mlflow", "tensorboard"}
    for tr in cfg.run.trackers:
        if tr not in known_trackers:
            raise ConfigError(f"run.trackers: unknown tracker {tr!r}; valid: {', '.join(sorted(known_trackers))}")
    if (why := ignored(cfg, explicit)) is not None:
        raise ConfigError(why)
    return cfg


def _check_collection(cfg: Config) -> None:
    """Refuse a data collection that can make no pair (training would be skipped every round)."""
    g, sel = cfg.generation, cfg.selection
    if g.strategy == "vote":
        raise ConfigError(
            "generation.strategy=vote is an evaluation strategy (a majority over final answers picks one answer; "
            "it makes no pairs): collect with parallel_chain (the same chains) and evaluate vote with "
            "run.eval_strategies or `evolve-ray eval --strategy vote`"
        )
    chains, per_chain = chain_grid(g.strategy, num_samples=g.num_samples, turns=g.turns)
    if chains * per_chain < 2:
        grid = {"direct": "", "parallel": " with generation.num_samples=1", "chain": " with generation.turns=0"}
        raise ConfigError(
            f"generation.strategy={g.strategy}{grid.get(g.strategy, ' with num_samples=1 and turns=0')} makes one "
            "answer per prompt, and so no pair: collect with chain (turns >= 1) or parallel / parallel_chain "
            "(num_samples >= 2); direct is an evaluation strategy (run.eval_strategies)"
        )
    if sel.rule in ("rule", "consistency") and per_chain < 2:
        raise ConfigError(
            f"selection.rule={sel.rule} compares chain 0's last turn with its first: it needs refinement turns "
            f"(generation.strategy=chain or parallel_chain, generation.turns >= 1), not strategy={g.strategy} "
            f"with turns={g.turns if g.strategy in ('chain', 'parallel_chain') else 0}"
        )
    if sel.rule in ("rule", "consistency") and chains > 1:
        raise ConfigError(
            f"selection.rule={sel.rule} reads chain 0 only: generation.num_samples={g.num_samples} would generate "
            f"{chains - 1} more chain(s) per prompt that no pair uses; collect with strategy=chain, or pick across "
            "chains with selection.rule=reward or verifier"
        )
    if g.temperature == 0 and chains > 1:
        raise ConfigError(
            f"generation.temperature=0 with generation.strategy={g.strategy} and num_samples={g.num_samples}: "
            f"greedy decoding makes the {chains} chains of a prompt copies of one; set a temperature above 0"
        )
    if sel.rule == "consistency" and sel.consistency_turns > g.turns:
        raise ConfigError(
            f"selection.consistency_turns={sel.consistency_turns} is above generation.turns={g.turns}: the last "
            f"{sel.consistency_turns} answers of a {g.turns + 1}-answer chain include its first, so every prompt "
            "would tie; set consistency_turns <= turns"
        )


def _check_engines(cfg: Config) -> None:
    """vLLM runs one tensor-parallel rank per GPU: the GPUs a generator reserves must match."""
    g = cfg.generation
    if g.backend != "transformers" and (g.tensor_parallel_size > 1 or g.gpus_per_generator >= 1):
        if g.gpus_per_generator != g.tensor_parallel_size:
            raise ConfigError(
                f"generation.tensor_parallel_size={g.tensor_parallel_size} needs generation.gpus_per_generator="
                f"{g.tensor_parallel_size} (one GPU per tensor-parallel rank), not {g.gpus_per_generator:g}"
            )


def _check_task(cfg: Config) -> None:
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.path: required when data.task=file")
    if cfg.data.task == "arith":
        from evolve_ray.tasks.arith import ArithTask  # pure, standard library only

        distinct = ArithTask(seed=cfg.data.seed).size("eval")
        if cfg.data.eval_prompts > distinct:
            raise ConfigError(
                f"data.eval_prompts={cfg.data.eval_prompts} is more than the arith task's {distinct} distinct "
                "held-out problems (more would repeat them); set at most that"
            )


def picks_with_reward_model(cfg: Config, strategies: list[str]) -> bool:
    """Whether the scorers load a reward model beside the verifier (best-of-N under scoring.kind=verifier)."""
    return cfg.scoring.kind == "verifier" and any(s in BEST_OF_N for s in strategies)


def best_of_n_unpicked(cfg: Config, strategies: list[str]) -> str | None:
    """Why best-of-N among `strategies` has no reward model to pick with under `cfg`, or None.

    Best-of-N is picked by a reward model, never by the verifier (which reads the answer key: that
    figure is pass@N, reported in its own column). Under scoring.kind=verifier the picker is
    model.reward or, on the built-in task it was trained on, the built-in reward model.
    """
    picked = [s for s in strategies if s in BEST_OF_N]
    if not picked or cfg.scoring.kind != "verifier" or cfg.model.reward or cfg.data.task == "arith":
        return None
    return (
        f"strategy {picked[0]} picks the best of N answers with a reward model, and there is none: "
        "scoring.kind=verifier, model.reward is empty, and the built-in reward model knows only the built-in task; "
        "set model.reward (a pick by the verifier would read the answer key: pass@N, not best-of-N)"
    )


def _check_comparison(cfg: Config, explicit: frozenset[str] | set[str]) -> None:
    """run.eval_strategies and what they run with. A temperature for a strategy not compared is
    refused when the user set it (Stage 1 inherits the settings with no strategies to compare)."""
    r = cfg.run
    for name in r.eval_strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"run.eval_strategies: unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if len(set(r.eval_strategies)) != len(r.eval_strategies):
        raise ConfigError("run.eval_strategies: a strategy is listed twice")
    if r.eval_strategies and cfg.data.eval_prompts == 0:
        raise ConfigError("run.eval_strategies needs data.eval_prompts > 0 (the strategies run on held-out prompts)")
    for name, temperature in r.eval_temperatures.items():
        if name not in STRATEGIES:
            raise ConfigError(f"run.eval_temperatures: unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
        if name not in r.eval_strategies:
            if "run.eval_temperatures" not in explicit:
                continue
            raise ConfigError(
                f"run.eval_temperatures.{name} is set but {name} is not in run.eval_strategies "
                f"[{', '.join(r.eval_strategies)}]; remove it or compare {name}"
            )
        if temperature < 0:
            raise ConfigError(f"run.eval_temperatures.{name}: {temperature} is below the minimum 0")
        if temperature == 0 and name not in ("direct", "chain"):
            raise ConfigError(
                f"run.eval_temperatures.{name}=0: {name} samples N answers, and N greedy answers are N copies of one"
            )
    sampled = [n for n in r.eval_strategies if n not in ("direct", "chain") and n not in r.eval_temperatures]
    if sampled and cfg.generation.temperature == 0 and (r.eval_num_samples > 1 or r.eval_budget_tokens > 0):
        raise ConfigError(
            f"run.eval_strategies: {sampled[0]} samples N answers at generation.temperature, which is 0, and N "
            f"greedy answers are N copies of one; set run.eval_temperatures.{sampled[0]} above 0"
        )
    if r.eval_strategies and r.eval_budget_tokens > 0 and (r.eval_strategy != "chain" or r.eval_turns < 1):
        raise ConfigError(
            "run.eval_budget_tokens needs run.eval_strategy=chain with run.eval_turns >= 1: the cost of a first "
            "answer and of a refinement turn that it plans N and K with are measured by that evaluation"
        )
    if (why := best_of_n_unpicked(cfg, r.eval_strategies)) is not None:
        raise ConfigError(f"run.eval_strategies: {why}")


def _validate_lora(lora: LoraConfig) -> None:
    if lora.rank == 0:  # LoRA settings without LoRA would be silently ignored
        for f in dataclasses.fields(LoraConfig):
            if f.name != "rank" and getattr(lora, f.name) != getattr(LoraConfig(), f.name):
                raise ConfigError(f"training.lora.{f.name} is set but training.lora.rank is 0 (LoRA off); set a rank")
        return
    if lora.rank > 512:
        raise ConfigError(f"training.lora.rank: {lora.rank} is above 512, the largest rank vLLM serves")
    if lora.dropout >= 1:
        raise ConfigError(f"training.lora.dropout: {lora.dropout} must be below 1")
    if not lora.target_modules:
        raise ConfigError("training.lora.target_modules: empty; name the modules that get adapters, e.g. q_proj")


def load_config(
    path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (), *, base: dict[str, Any] | None = None
) -> Config:
    """Defaults, then `base` (a resumed run's stored config), then the YAML file's overrides, then
    each `--set a.b=c` in order."""
    overrides = overrides_of(path, sets)
    merged = _merge(base or {}, overrides)
    # What the user set, for the rule on options that have no effect; the stored base of a resume is not.
    return validate(_build(Config, merged, ""), explicit=_explicit_keys(Config, overrides))


def overrides_of(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The override tree of a YAML file and `--set` items, merged in order (not validated)."""
    merged: dict[str, Any] = read_yaml(path) if path else {}
    for item in sets:
        merged = _merge(merged, parse_set(item))
    return merged


def field_of(key: str) -> dataclasses.Field:
    """The schema field of a dotted key ("generation.num_generators")."""
    cls: Any = Config
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def config_items(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.policy": ..., ...}: one entry per option, sections expanded, in schema order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out |= config_items(value, f"{prefix}{f.name}.")
        else:
            out[prefix + f.name] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, width=100)


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some fields of some sections replaced, validated like user input."""
    merged = _merge(to_dict(cfg), sections)
    return validate(_build(Config, merged, ""))
