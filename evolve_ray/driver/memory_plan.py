"""The memory plan: what each role holds on one GPU, and the CPUs and GPUs all roles ask for.

`evolve-ray print-config` prints it under the resolved config, and the driver refuses a run that
cannot fit (`preflight.check_fits`) before any actor starts. Estimates in bytes, with P a model's
parameter count (exact: the model is built on the `meta` device from its config, no weights):

Generator, per GPU: P x bytes(model.dtype) / generation.tensor_parallel_size, plus
    generation.kv_cache_mib (vLLM's KV cache; a transformers backend holds less).
Scorer: the reward model's P_r x bytes(model.dtype), plus generation.kv_cache_mib with
    scoring.backend=vllm; a verifier holds no model, unless a best-of-N strategy in
    run.eval_strategies needs one to pick with (config.picks_with_reward_model).
Train worker, per rank (n = training.num_workers; FSDP shards by s = n, DDP holds it all, s = 1):
    float32 master weights 4P/s, float32 gradients 4P/s, AdamW's two float32 moments 8P/s;
    FSDP: the gathered parameters in the compute dtype: the root's (embeddings, head, final norm:
    FSDP2 keeps the root gathered from forward to backward) plus one block's;
    the frozen reference (training.reference=fixed, loss != sft): P x c / s (c below: it is held
    in the compute dtype);
    one micro-batch's activations: micro = ceil(batch_size / (n x grad_accum)) prompts give
    b = 2 x micro sequences (chosen + rejected; micro for sft) of S = max_len tokens, with hidden
    H, L blocks, vocab V and c = bytes of the compute dtype (2 with training.bf16, else 4). Each
    term of the loss (train.batching.loss_terms: evolve's direct and refine, ...) is a forward
    whose graph lives until the micro-batch's one backward, so activations and logits count
    T = len(terms) times:
      with training.activation_checkpointing: T x L x b x S x H x c (each block's input)
        + 17 x b x S x H x c (one block recomputed in backward);
      without: T x L x 17 x b x S x H x c.
      17 x b x S x H x c is Korthikanti et al. 2022 (Reducing Activation Recomputation in Large
      Transformer Models, eq. 1): 34 x s x b x h bytes per layer for 16-bit activations, without
      its attention-score term 5 x a x s^2 x b (transformers' SDPA attention never stores them);
      logits: T x b x S x V x 4 (the float32 log-softmax sequence_logprobs keeps for backward).
Stage 1 (sft.data) trains on the same workers with loss=sft: no reference, b = micro, terms
direct and refine, so never more than the configured loss's need; the plan is the latter's.
LoRA (training.lora.rank = r > 0): the base is frozen in the compute dtype, P x c / s, and only
the adapter is trained: A = r x (in + out) summed over the targeted linear layers, with float32
weights 4A/s, gradients 4A/s and AdamW moments 8A/s; no reference copy (the fixed reference is
the base with the adapter off). Activations and logits as above (the adapters read the frozen
layers' inputs, so those stay saved). A LoRA generator also holds vLLM's adapter slot: A at
vLLM's max_lora_rank over every attention and MLP projection, in model.dtype, / tp.
Not counted: the CUDA context and allocator fragmentation (~1-2 GiB), vLLM's CUDA graphs and
sampling workspace, a transformers scorer's activations, DDP's gradient buckets and autocast's
bf16 weight copies, transients (the bf16 logits of the forward in flight).

A role on GPUs fits when its need per GPU <= the GPU's memory x the share it reserves
(min(1, gpus_per_*): half a GPU gets half the memory). Totals: the GPUs and logical CPUs that
generators, scorers (a verifier scorer is an actor too) and train workers reserve, against the
cluster's (Ray Train's controller and the buffer, coordinator and control actors take none).

Pure: no ray, no vllm; torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from evolve_ray.config import LORA_TARGETS, Config, ConfigError, LoraConfig, picks_with_reward_model
from evolve_ray.models.warm_start import SHIPPED

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
Fits = Literal["yes", "no", "unknown", "cpu"]  # cpu: host memory, not checked


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: parameter counts and the sizes activations scale with."""

    params: int
    root_params: int  # outside the transformer blocks (embeddings, head, final norm): all when unknown
    block_params: int  # the largest block's
    layers: int
    hidden: int
    vocab: int
    # Every nn.Linear as (name's last segment, in_features, out_features, how many): LoRA's sizes.
    linears: tuple[tuple[str, int, int, int], ...] = ()


@dataclass(frozen=True)
class Unknown:
    """A model whose shape could not be read, and why."""

    why: str


@dataclass(frozen=True)
class Row:
    """One role: `count` actors of `gpus_each` GPUs, each GPU holding `parts` (name, bytes)."""

    role: str
    count: int
    gpus_each: float
    parts: tuple[tuple[str, float], ...]
    fits: Fits
    note: str = ""  # why the need is unknown
    fix: str = ""  # the settings that lower the need, for the refusal

    @property
    def need(self) -> float:
        return sum(b for _, b in self.parts)


@dataclass(frozen=True)
class Ask:
    """One resource (CPU or GPU): what each setting reserves, against what the cluster has."""

    resource: str
    parts: tuple[tuple[str, int, float], ...]  # (settings, count, each)
    have: float | None

    @property
    def total(self) -> float:
        return sum(n * each for _, n, each in self.parts)

    @property
    def fits(self) -> bool:
        return self.have is None or self.total <= self.have + 1e-9


@dataclass(frozen=True)
class Plan:
    rows: tuple[Row, ...]
    asks: tuple[Ask, ...]
    gpu_memory: float | None  # bytes of one GPU; None: unknown
    gpu_memory_from: str  # where gpu_memory came from, or why it is unknown
    local_cluster: bool  # cluster.address is empty: the run starts its own cluster


# ----------------------------------------------------------------------------------------------
# Reading models and the GPU (the only I/O here)


def shape_of(model_config: Any, *, reward: bool, trust_remote_code: bool = False) -> ModelShape:
    """Count a Hugging Face config's parameters exactly, on the meta device (no memory, ~0.1 s).

    Args:
        reward: build the sequence-classification model (the scorer's) instead of the causal LM.
    """
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(model_config, trust_remote_code=trust_remote_code)
    block_names = set(model._no_split_modules or ())  # Hugging Face names its decoder-layer classes here
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in block_names]
    params = sum(p.numel() for p in model.parameters())
    linears = Counter(
        (name.rsplit(".", 1)[-1], m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    text = model_config.get_text_config()  # multimodal configs nest the decoder's sizes
    return ModelShape(
        params=params,
        root_params=params - sum(blocks),
        block_params=max(blocks, default=0),
        layers=len(blocks),
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        linears=tuple((name, i, o, n) for (name, i, o), n in sorted(linears.items())),
    )


def lora_params(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Parameters of a rank-`rank` adapter on the linear layers named in `targets`: r x (in + out) each."""
    return sum(n * rank * (i + o) for name, i, o, n in shape.linears if name in targets)


def read_shape(path: str, *, reward: bool, trust_remote_code: bool = False) -> ModelShape | Unknown:
    """The shape of the model at `path` (a directory or hub id), or why it cannot be read."""
    from transformers import AutoConfig

    from evolve_ray.models.lora import split_policy

    try:
        mc = AutoConfig.from_pretrained(split_policy(path)[0], trust_remote_code=trust_remote_code)  # LoRA: the base
        return shape_of(mc, reward=reward, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Unknown(f"cannot read the config of {path!r}: {first}")


def model_paths(cfg: Config) -> tuple[str, str]:
    """The policy and reward model the run would load (empty: the shipped warm start's)."""
    return cfg.model.policy or str(SHIPPED / "policy"), cfg.model.reward or str(SHIPPED / "reward")


def uses_gpus(cfg: Config) -> bool:
    g, s, t = cfg.generation, cfg.scoring, cfg.training
    return g.gpus_per_generator > 0 or s.gpus_per_scorer > 0 or t.use_gpu


def gpu_memory(cfg: Config) -> tuple[float | None, str]:
    """Bytes of one GPU and where that came from: cluster.gpu_memory_gib, else this machine's GPU."""
    if cfg.cluster.gpu_memory_gib > 0:
        return cfg.cluster.gpu_memory_gib * GIB, "cluster.gpu_memory_gib"
    if not uses_gpus(cfg):
        return None, "no role asks for a GPU"
    import torch

    if not torch.cuda.is_available():
        return None, "no GPU on this machine; set cluster.gpu_memory_gib to check the needs"
    props = torch.cuda.get_device_properties(0)  # the driver's GPU; the cluster's are assumed alike
    return float(props.total_memory), f"this machine's {props.name}"


def plan_for(
    cfg: Config,
    *,
    cluster: Mapping[str, float] | None = None,
    policy_path: str | None = None,
    reward_path: str | None = None,
) -> Plan:
    """Read the models' configs and the GPU's memory, then `plan`. Paths default to `model_paths`."""
    default_policy, default_reward = model_paths(cfg)
    trc = cfg.model.trust_remote_code
    policy = read_shape(policy_path or default_policy, reward=False, trust_remote_code=trc)
    reward = None
    if cfg.scoring.kind == "reward_model" or picks_with_reward_model(cfg, cfg.run.eval_strategies):
        reward = read_shape(reward_path or default_reward, reward=True, trust_remote_code=trc)
    memory, source = gpu_memory(cfg)
    return plan(cfg, policy=policy, reward=reward, gpu_memory_bytes=memory, gpu_memory_from=source, cluster=cluster)


# ----------------------------------------------------------------------------------------------
# The plan (pure arithmetic)


def plan(
    cfg: Config,
    *,
    policy: ModelShape | Unknown,
    reward: ModelShape | Unknown | None,
    gpu_memory_bytes: float | None,
    cluster: Mapping[str, float] | None,
    gpu_memory_from: str = "",
) -> Plan:
    """Each role's need per GPU and the resources all roles ask for.

    Args:
        reward: the reward model's shape; None when the scorers hold none (a verifier that
            picks no best-of-N).
        gpu_memory_bytes: one GPU's memory; None: unknown (needs are shown, nothing refused).
        cluster: ray.cluster_resources() (CPU, GPU); None: totals are shown as asked only.
    """
    g, s, t = cfg.generation, cfg.scoring, cfg.training
    judged = (
        _row("generator", g.num_generators, g.gpus_per_generator, _generator(cfg, policy), gpu_memory_bytes),
        _row("scorer", s.num_scorers, s.gpus_per_scorer, _scorer(cfg, reward), gpu_memory_bytes),
        _row("train worker", t.num_workers, float(t.use_gpu), _trainer(cfg, policy), gpu_memory_bytes),
    )
    rows = tuple(dataclasses.replace(r, fix=_fix(cfg, r.role)) for r in judged)
    return Plan(rows, _asks(cfg, cluster), gpu_memory_bytes, gpu_memory_from, cfg.cluster.address == "")


Parts = tuple[tuple[str, float], ...]


def _row(role: str, count: int, gpus_each: float, parts: Parts | str, memory: float | None) -> Row:
    """One role judged against one GPU's memory; `parts` a string is why its need is unknown."""
    if isinstance(parts, str):
        return Row(role, count, gpus_each, (), "cpu" if gpus_each == 0 else "unknown", parts)
    need = sum(b for _, b in parts)
    fits: Fits
    if gpus_each == 0:
        fits = "cpu"
    elif memory is None:
        fits = "unknown"
    else:
        fits = "yes" if need <= memory * min(1.0, gpus_each) else "no"
    return Row(role, count, gpus_each, parts, fits)


def _generator(cfg: Config, policy: ModelShape | Unknown) -> Parts | str:
    if isinstance(policy, Unknown):
        return policy.why
    size, tp = DTYPE_BYTES[cfg.model.dtype], cfg.generation.tensor_parallel_size
    parts: Parts = ((f"weights {_short(cfg.model.dtype)}", policy.params * size / tp),)
    if cfg.training.lora.rank:
        from evolve_ray.models.lora import vllm_max_rank

        lora = cfg.training.lora
        slot = lora_params(policy, vllm_max_rank(lora.rank), sorted({*LORA_TARGETS, *lora.target_modules}))
        parts += ((f"adapter slot {_short(cfg.model.dtype)}", slot * size / tp),)
    return parts + (("kv cache", cfg.generation.kv_cache_mib * 2.0**20),)


def _scorer(cfg: Config, reward: ModelShape | Unknown | None) -> Parts | str:
    if reward is None:
        return ()  # a verifier: no model
    if isinstance(reward, Unknown):
        return reward.why
    parts: Parts = ((f"weights {_short(cfg.model.dtype)}", reward.params * DTYPE_BYTES[cfg.model.dtype]),)
    if cfg.scoring.backend == "vllm":
        parts += (("kv cache", cfg.generation.kv_cache_mib * 2.0**20),)
    return parts


def _trainer(cfg: Config, policy: ModelShape | Unknown) -> Parts | str:
    """A train worker's need per rank (the module docstring's formulas)."""
    from evolve_ray.train.batching import loss_terms  # imports torch: only when planning

    if isinstance(policy, Unknown):
        return policy.why
    t, m = cfg.training, policy
    fsdp = t.strategy == "fsdp"
    shards = t.num_workers if fsdp else 1
    compute = "bfloat16" if t.bf16 else "float32"
    c = DTYPE_BYTES[compute]
    parts = _trained_weights(m, t.lora, compute, shards)
    if fsdp:
        parts.append((f"gathered {_short(compute)}", (m.root_params + m.block_params) * c))
    # Held in the compute dtype (train.parallel.load_reference); LoRA's is the base with the adapter off.
    if t.reference == "fixed" and t.loss != "sft" and not t.lora.rank:
        parts.append((f"reference {_short(compute)}", m.params * c / shards))
    terms = len(loss_terms(t))
    micro = math.ceil(t.batch_size / (t.num_workers * t.grad_accum))
    tokens = micro * (2 if t.loss != "sft" else 1) * t.max_len  # b x S
    block = 17 * tokens * m.hidden * c  # Korthikanti et al. 2022, without the s^2 scores
    if t.activation_checkpointing:
        parts += [("activations", terms * m.layers * tokens * m.hidden * c), ("block recompute", block)]
    else:
        parts.append(("activations", terms * m.layers * block))
    parts.append(("logits fp32", terms * tokens * m.vocab * 4))
    return tuple(parts)


def _trained_weights(m: ModelShape, lora: LoraConfig, compute: str, shards: int) -> list[tuple[str, float]]:
    """Weights, gradients and AdamW state: of the whole model in float32, or with LoRA a frozen
    base in the compute dtype and a float32 adapter."""
    if not lora.rank:
        p = m.params / shards
        return [("weights fp32", 4 * p), ("grads fp32", 4 * p), ("adam fp32", 8 * p)]
    a = lora_params(m, lora.rank, lora.target_modules) / shards
    return [
        (f"frozen base {_short(compute)}", m.params * DTYPE_BYTES[compute] / shards),
        ("adapter fp32", 4 * a),
        ("adapter grads fp32", 4 * a),
        ("adapter adam fp32", 8 * a),
    ]


def _fix(cfg: Config, role: str) -> str:
    """What lowers `role`'s need, leaving out what the config already does."""
    if role == "generator":
        return (
            "lower generation.kv_cache_mib, or split the model over GPUs with generation.tensor_parallel_size "
            "(and as many gpus_per_generator)"
        )
    if role == "scorer":
        return (
            "lower generation.kv_cache_mib (a vLLM scorer's cache too), use scoring.backend=transformers, or "
            "give each scorer more of a GPU (scoring.gpus_per_scorer)"
        )
    t = cfg.training
    micro = math.ceil(t.batch_size / (t.num_workers * t.grad_accum))
    fixes = [f"raise training.grad_accum (micro-batches of {micro} prompts now)"] if micro > 1 else []
    fixes.append("lower training.max_len")
    if not t.activation_checkpointing:
        fixes.append("set training.activation_checkpointing=true")
    fixes.append("set training.strategy=fsdp" if t.strategy == "ddp" else "shard over more training.num_workers")
    return ", ".join(fixes) + ", or use GPUs with more memory"


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]


def _asks(cfg: Config, cluster: Mapping[str, float] | None) -> tuple[Ask, ...]:
    g, s, t = cfg.generation, cfg.scoring, cfg.training

    def have(resource: str) -> float | None:
        return None if cluster is None else float(cluster.get(resource, 0.0))  # Ray omits a resource it has none of

    gpus = (
        ("generation.num_generators x gpus_per_generator", g.num_generators, g.gpus_per_generator),
        ("scoring.num_scorers x gpus_per_scorer", s.num_scorers, s.gpus_per_scorer),
        ("training.num_workers (use_gpu: 1 each)", t.num_workers, float(t.use_gpu)),
    )
    cpus = (
        ("generation.num_generators x cpus_per_generator", g.num_generators, g.cpus_per_generator),
        ("scoring.num_scorers x cpus_per_scorer", s.num_scorers, s.cpus_per_scorer),
        ("training.num_workers x cpus_per_worker", t.num_workers, t.cpus_per_worker),
    )
    return Ask("GPU", gpus, have("GPU")), Ask("CPU", cpus, have("CPU"))


# ----------------------------------------------------------------------------------------------
# Showing and checking


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def format_plan(p: Plan) -> str:
    """The plan as a table: GiB per GPU of each role (1 decimal), then the CPU and GPU totals."""
    memory = f"{_gib(p.gpu_memory)} GiB" if p.gpu_memory is not None else "unknown"
    lines = [
        f"memory plan (GiB per GPU; a CPU role's is host memory); GPU memory: {memory} ({p.gpu_memory_from})",
        f"{'role':<13} {'count':>5} {'GPUs each':>9} {'need GiB':>8}  {'fits':<7} parts",
    ]
    for r in p.rows:
        if r.note:
            parts, need = r.note, "?"
        else:
            parts = " + ".join(f"{name} {_gib(b)}" for name, b in r.parts) or "no model (verifier)"
            need = _gib(r.need)
        lines.append(f"{r.role:<13} {r.count:>5} {r.gpus_each:>9g} {need:>8}  {r.fits:<7} {parts}")
    lines.append(f"{'resources':<13} {'asked':>7} {'cluster':>8}  from")
    for a in p.asks:
        have = f"{a.have:g}" if a.have is not None else "-"
        parts = ", ".join(f"{name} = {n} x {each:g}" for name, n, each in a.parts)
        lines.append(f"{a.resource:<13} {a.total:>7g} {have:>8}  {parts}")
    return "\n".join(lines)


def check_plan(p: Plan) -> None:
    """Raise a one-line ConfigError naming what cannot fit: a resource total, then a role's memory."""
    for a in p.asks:
        if not a.fits:
            raise ConfigError(_ask_message(a, p.local_cluster))
    for r in p.rows:
        if r.fits == "no":
            assert p.gpu_memory is not None  # a row is judged "no" only against a known memory
            share = min(1.0, r.gpus_each)
            where = f"a GPU has {_gib(p.gpu_memory)} GiB ({p.gpu_memory_from})"
            if share < 1:
                where += f" and its {share:g}-GPU share is {_gib(p.gpu_memory * share)} GiB"
            parts = " + ".join(f"{name} {_gib(b)}" for name, b in r.parts)
            raise ConfigError(f"each {r.role} needs {_gib(r.need)} GiB per GPU ({parts}) but {where}; {r.fix}")


def _ask_message(a: Ask, local_cluster: bool) -> str:
    parts = ", ".join(f"{name} = {n} x {each:g}" for name, n, each in a.parts if n * each)
    unit = "CPUs" if a.resource == "CPU" else "GPUs"
    if a.resource == "CPU":
        fix = "use fewer generators, scorers or train workers, or smaller cpus_per_* settings"
        fix += (
            ", or raise cluster.num_cpus (a local cluster's logical CPUs are a scheduling budget, not cores)"
            if local_cluster
            else ", or add nodes"
        )
    else:
        fix = "use fewer generators, scorers or train workers, smaller gpus_per_* settings, or add GPUs"
    return f"the run asks for {a.total:g} {unit} ({parts}) but the cluster has {a.have:g}; {fix}"
