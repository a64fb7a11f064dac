"""The configuration schema: frozen dataclasses, YAML overrides, `--set a.b=c`.

The defaults are the embedded demo (tiny built-in models, the built-in arithmetic task, a local
CPU cluster): `evolve-ray demo` runs them as they are, and recipes for real models override them
(jobs/configs/).

Each default lives in exactly one field below. YAML files and `--set` hold overrides only;
an unknown key, a wrong type or a value out of range is a `ConfigError` that names the key.
Pure module: no ray, no vllm, no torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from evolve_ray.core.strategies import STRATEGIES
from evolve_ray.errors import UserError

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
    refused: dict[str, str] | None = None,
) -> Any:
    """A dataclass field carrying help text, an optional numeric bound, and values refused with a reason."""
    meta = {"help": help, "min": min, "gt": gt, "refused": refused or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    policy: str = _f(
        "", "Policy checkpoint: a local directory or a hub id. Empty: the built-in warm start (a tiny Stage-1 model)."
    )
    reward: str = _f("", "Reward model (sequence classification): path or hub id. Empty: the built-in learned one.")
    tokenizer: str = _f("", "Tokenizer path or hub id; empty means the policy's own.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32",
        "Inference dtype: the engines' weights, and the dtype checkpoints and weight pushes are written in. "
        "Training always keeps float32 master weights and optimizer state (training.bf16 sets its compute dtype).",
    )
    max_model_len: int = _f(512, "Context length given to the engines (prompt + response tokens).", min=16)
    trust_remote_code: bool = _f(False, "Allow model repositories to run their own code. Off unless you trust them.")


@dataclass(frozen=True)
class DataConfig:
    task: str = _f("arith", "Built-in task name, or 'file' to read `path`.")
    path: str = _f("", "Prompt file (json/jsonl/parquet) or hub dataset id when task=file.")
    format: Literal["auto", "chat", "alpaca", "gsm8k", "columns"] = _f("auto", "Row format of `path`.")
    prompt_column: str = _f("prompt", "Prompt column when format=columns.")
    answer_column: str = _f("", "Reference-answer column when format=columns (empty: none).")
    prompts_per_round: int = _f(512, "Prompts drawn for each round's data collection.", min=1)
    eval_prompts: int = _f(500, "Held-out prompts evaluated after every round (500: +-2 points of accuracy).", min=0)
    fresh_per_round: bool = _f(True, "Draw new prompts each round (False: reuse the same set).")
    seed: int = _f(0, "Seed for the task generator and prompt sampling.")


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["auto", "vllm", "transformers"] = _f("auto", "Inference engine; auto picks vLLM when it imports.")
    num_generators: int = _f(1, "GeneratorActor count; they pull the round's prompts in batches.", min=1)
    max_work_batch: int = _f(
        256, "Most prompts a generator takes at once: a fair share of the round's unfinished ones, up to this.", min=1
    )
    cpus_per_generator: float = _f(0.5, "Logical CPUs reserved per generator.", min=0)
    gpus_per_generator: float = _f(0.0, "GPUs reserved per generator (tensor_parallel_size on GPU nodes).", min=0)
    tensor_parallel_size: int = _f(1, "vLLM tensor parallelism per generator (GPU only).", min=1)
    strategy: Literal["direct", "parallel", "chain", "parallel_chain", "vote"] = _f(
        "chain", "Inference strategy used for data collection (vote is evaluation-only: run.eval_strategies)."
    )
    num_samples: int = _f(1, "N: independent answers (parallel) or chains (parallel_chain).", min=1)
    turns: int = _f(3, "K: refinement turns after the first answer (chain strategies).", min=0)
    temperature: float = _f(0.7, "Sampling temperature; 0 is greedy.", min=0)
    top_p: float = _f(1.0, "Nucleus sampling mass.", gt=0)
    max_new_tokens: int = _f(8, "Maximum tokens per response (the demo's sums need 4 with EOS).", min=1)
    seed: int = _f(0, "Sampling seed (per request seeds derive from it).")
    kv_cache_mib: int = _f(64, "vLLM KV cache size in MiB (CPU needs it set explicitly).", min=1)
    enforce_eager: bool = _f(True, "Skip graph compilation (saves ~25 s start-up on CPU).")


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
    kind: Literal["reward_model", "verifier"] = _f("reward_model", "Score with a reward model or the task's verifier.")
    backend: Literal["transformers", "vllm"] = _f("transformers", "Reward-model runner.")
    num_scorers: int = _f(1, "ScorerActor count.", min=1)
    cpus_per_scorer: float = _f(0.25, "Logical CPUs reserved per scorer.", min=0)
    gpus_per_scorer: float = _f(0.0, "GPUs reserved per scorer.", min=0)
    micro_batch: int = _f(16, "Candidates per reward-model forward pass.", min=1)


@dataclass(frozen=True)
class SelectionConfig:
    rule: Literal["reward", "rule", "verifier", "consistency"] = _f("reward", "How a scored chain becomes pairs.")
    min_margin: float = _f(0.0, "reward rule: drop prompts whose best-worst margin is at or below this.", min=0)
    min_chosen_score: float | None = _f(
        None,
        "reward rule: drop prompts whose best score is at or below this (null: no floor). Only meaningful for a "
        "reward model with a known scale; the demo sets 0 (its reward model's sign is the verifier's verdict).",
    )
    tie_tolerance: float = _f(1e-6, "Scores closer than this count as equal (ties are dropped).", min=0)
    keep_pairs: bool = _f(True, "Also emit keep pairs (t(x, y_w); y_w; y_l): shown a good answer, keep it.")
    consistency_turns: int = _f(2, "consistency rule: how many final turns must agree.", min=2)


@dataclass(frozen=True)
class TrainingConfig:
    loss: Literal["sft", "dpo", "ipo", "evolve", "inpo"] = _f("evolve", "Training objective.")
    direct_loss: Literal["dpo", "ipo"] = _f("dpo", "evolve: form of the direct term.")
    beta: float = _f(0.5, "KL strength of DPO/IPO/EVOLVE (the paper: 0.1; the demo's tiny model needs 0.5).", gt=0)
    alpha: float = _f(1.0, "evolve: weight of the refinement term.", min=0)
    gamma: float = _f(1.0, "evolve: weight of the keep term (needs selection.keep_pairs).", min=0)
    label_smoothing: float = _f(0.0, "DPO label smoothing (conservative DPO).", min=0)
    eta: float = _f(0.005, "INPO eta (paper value).", gt=0)
    tau_ratio: float = _f(1 / 3, "INPO tau = tau_ratio * eta (paper: 1/3).", min=0)
    sft_direct_weight: float = _f(1.0, "sft: weight of -logp(y_w | x).", min=0)
    sft_refine_weight: float = _f(1.0, "sft: weight of -logp(y_w | t(x, y_l)).", min=0)
    logprob: Literal["sum", "mean"] = _f("sum", "Sequence log-prob: summed or mean per token.")
    reference: Literal["refresh", "fixed"] = _f("refresh", "Reference policy: previous round's, or the start.")
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
        64, "Prompts of the preference set held out (never trained on) and evaluated per turn before and after.", min=0
    )
    max_pairs: int = _f(0, "Train on at most this many pairs (0: all of them).", min=0)
    epochs: int = _f(1, "Passes over the pairs.", min=1)
    lr: float = _f(1e-5, "Peak learning rate of Stage 1 (the schedule, batch and workers are training.*'s).", gt=0)


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
    address: str = _f("", "Ray address to join ('auto' for a running cluster); empty starts a local one.")
    num_cpus: int = _f(0, "Logical CPUs of a local cluster (0: detect).", min=0)
    dashboard_host: str = _f("127.0.0.1", "Dashboard bind address of a local cluster.")
    include_dashboard: bool = _f(True, "Start the dashboard with a local cluster.")
    gpu_memory_gib: float = _f(
        0.0,
        "Memory of one GPU, for the memory plan (print-config, and a refusal at start when a role cannot fit); "
        "0: read from the driver's GPU when it has one, else the plan shows needs only.",
        min=0,
    )
    placement_timeout_s: float = _f(
        600.0, "Seconds to wait for the cluster to place the generators' and scorers' resources.", min=1
    )


@dataclass(frozen=True)
class RunConfig:
    out: str = _f("runs/evolve", "Run directory (the only place the project writes).")
    rounds: int = _f(3, "EVOLVE rounds.", min=0)
    eval_strategy: Literal["direct", "chain"] = _f("chain", "Strategy used for per-round evaluation.")
    eval_turns: int = _f(3, "Refinement turns evaluated (K of the chain strategies).", min=0)
    eval_strategies: list[str] = _f(
        [],
        "Inference strategies compared on the held-out prompts at the end of the run (direct, parallel, chain, "
        "parallel_chain, vote): accuracy, score and tokens per prompt of each, in report.md.",
    )
    eval_num_samples: int = _f(4, "N of the parallel strategies in run.eval_strategies.", min=1)
    eval_strategies_every_round: bool = _f(False, "Compare run.eval_strategies after every round, not only the last.")
    eval_start: bool = _f(
        True, "Evaluate the starting policy before round 0 (report row 'start'); false skips it, e.g. when it is known."
    )
    trackers: list[str] = _f([], "Optional trackers: wandb, mlflow, tensorboard.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f("INFO", "Logging level.")


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
            return float(value)  # YAML 1.1 reads 5e-5 and 1e-3 (no dot) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a schema bug, not a user error


def _check_bounds(key: str, value: Any, f: dataclasses.Field) -> None:
    lo, gt = f.metadata.get("min"), f.metadata.get("gt")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: {value} is below the minimum {lo}")
        if gt is not None and value <= gt:
            raise ConfigError(f"{key}: {value} must be greater than {gt}")


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
        raise ConfigError(f"--set {path}: cannot parse value {raw!r}: {e}") from None
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
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


_FILE_ONLY = ("path", "format", "prompt_column", "answer_column")  # DataConfig fields only task=file reads


def validate(cfg: Config) -> Config:
    """Cross-field rules that a single field's type cannot express."""
    t = cfg.refinement.template
    for slot in ("{question}", "{answer}"):
        if slot not in t:
            raise ConfigError(f"refinement.template: must contain {slot}")
    if cfg.training.gamma > 0 and not cfg.selection.keep_pairs:
        raise ConfigError("training.gamma > 0 needs selection.keep_pairs=true (no keep pairs otherwise)")
    if cfg.selection.rule == "verifier" and cfg.scoring.kind != "verifier":
        raise ConfigError(
            "selection.rule=verifier needs scoring.kind=verifier (it reads the verifier's 1/0 scores); "
            "with a reward model use selection.rule=reward"
        )
    if cfg.training.loss == "inpo" and cfg.training.reference != "fixed":
        raise ConfigError(
            "training.loss=inpo needs training.reference=fixed: INPO's pi_ref is the starting policy, and with "
            "refresh it equals the previous round's policy and INPO turns into IPO with a 1/(2 eta) margin"
        )
    if cfg.data.task == "file" and not cfg.data.path:
        raise ConfigError("data.path: required when data.task=file")
    if cfg.generation.strategy == "vote":
        raise ConfigError(
            "generation.strategy=vote is an evaluation strategy (a majority over final answers picks one answer; "
            "it makes no pairs): collect with parallel_chain (the same chains) and evaluate vote with "
            "run.eval_strategies or `evolve-ray eval --strategy vote`"
        )
    if not cfg.sft.data:  # Stage-1 settings without Stage 1 would be silently ignored
        for f in dataclasses.fields(SftConfig):
            if f.name != "data" and getattr(cfg.sft, f.name) != f.default:
                raise ConfigError(
                    f"sft.{f.name} is set but sft.data is empty (no Stage 1 runs); set sft.data or remove it"
                )
    if cfg.data.task != "file":  # a file setting under a built-in task would be silently ignored
        for f in dataclasses.fields(DataConfig):
            if f.name in _FILE_ONLY and getattr(cfg.data, f.name) != f.default:
                raise ConfigError(
                    f"data.{f.name} is set but data.task={cfg.data.task} does not read files; "
                    f"set data.task=file to use it (or remove data.{f.name})"
                )
    for name in cfg.run.eval_strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"run.eval_strategies: unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if len(set(cfg.run.eval_strategies)) != len(cfg.run.eval_strategies):
        raise ConfigError("run.eval_strategies: a strategy is listed twice")
    if cfg.run.eval_strategies and cfg.data.eval_prompts == 0:
        raise ConfigError("run.eval_strategies needs data.eval_prompts > 0 (the strategies run on held-out prompts)")
    known_trackers = {"wandb", "mlflow", "tensorboard"}
    for tr in cfg.run.trackers:
        if tr not in known_trackers:
            raise ConfigError(f"run.trackers: unknown tracker {tr!r}; valid: {', '.join(sorted(known_trackers))}")
    return cfg


def load_config(
    path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (), *, base: dict[str, Any] | None = None
) -> Config:
    """Defaults, then `base` (a resumed run's stored config), then the YAML file's overrides, then
    each `--set a.b=c` in order."""
    merged: dict[str, Any] = _merge(base or {}, read_yaml(path) if path else {})
    for item in sets:
        merged = _merge(merged, parse_set(item))
    return validate(_build(Config, merged, ""))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, width=100)


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some fields of some sections replaced, validated like user input."""
    merged = _merge(to_dict(cfg), sections)
    return validate(_build(Config, merged, ""))
