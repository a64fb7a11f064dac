"""LoRA adapters (training.lora): attaching them for training, their checkpoint, and merging.

A LoRA checkpoint is a PEFT adapter directory (adapter_config.json and adapter_model.safetensors,
the format peft loads and vLLM serves as a LoRARequest), with the run's tokenizer beside it. Its
adapter_config.json names the base model in `base_model_name_or_path`: relative to the adapter
directory when the base lies in the same run directory (a moved run keeps working), otherwise the
path or hub id as given. Wherever a policy path is read (the trainer, a generator, `evolve-ray
eval`), an adapter directory stands for its base plus the adapter.

The adapter is stored in float32 whatever model.dtype is: it is a few MB, a resumed trainer
continues from its exact master values, and vLLM casts it to the serving dtype as it loads it.
No ray, no vllm.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from evolve_ray.config import LoraConfig
from evolve_ray.errors import UserError

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The ranks vLLM 0.32 accepts as max_lora_rank (vllm/config/lora.py MaxLoRARanks).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_PREFIX = "base_model.model."  # PEFT's prefix on the adapted model's module names


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def adapter_base(path: str | Path) -> str:
    """The base model of the adapter at `path`; a relative record is resolved against `path`."""
    base = adapter_config(path).get("base_model_name_or_path") or ""
    if not base:
        raise UserError(f"LoRA adapter {path}: {ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    local = Path(path) / base
    return str(local.resolve()) if not Path(base).is_absolute() and local.exists() else base


def split_policy(path: str) -> tuple[str, str | None]:
    """(base model, adapter directory or None) of a policy path."""
    return (adapter_base(path), path) if is_adapter(path) else (path, None)


def adapter_rank(path: str | Path) -> int:
    return int(adapter_config(path)["r"])


def vllm_max_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves `rank`."""
    return next(r for r in VLLM_RANKS if r >= rank)


def base_record(base: str, adapter_dir: str | Path, run_dir: str | Path) -> str:
    """How the adapter at `adapter_dir` names its base: relative to it when both lie in `run_dir`."""
    b, run = Path(base), Path(run_dir).resolve()
    if b.is_absolute() and b.resolve().is_relative_to(run):
        return os.path.relpath(b.resolve(), Path(adapter_dir).resolve())
    return base


# ----------------------------------------------------------------------------------------------
# Training


def peft_config(lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    alpha = int(lora.alpha) if lora.alpha.is_integer() else lora.alpha  # 32, not 32.0, in adapter_config.json
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; any number scales alpha / r
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )


def attach(model: torch.nn.Module, lora: LoraConfig, adapter: str | None) -> PeftModel:
    """`model` frozen, with a trainable float32 adapter: a new one (B = 0: the policy starts equal
    to the base) or the one saved at `adapter`, which must have the configured rank and targets."""
    from peft import PeftModel, get_peft_model

    model.requires_grad_(False)
    if adapter is None:
        peft_model = get_peft_model(model, peft_config(lora))  # type: ignore[arg-type]
    else:
        saved = adapter_config(adapter)
        if saved["r"] != lora.rank or set(saved["target_modules"]) != set(lora.target_modules):
            raise UserError(
                f"LoRA adapter {adapter} has rank {saved['r']} on {sorted(saved['target_modules'])}, but "
                f"training.lora asks for rank {lora.rank} on {sorted(lora.target_modules)}"
            )
        peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=True)  # type: ignore[arg-type]
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # the masters AdamW updates (peft keeps a bf16 base's dtype otherwise)
    return peft_model


def adapter_tensors(model: PeftModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter in PEFT's file names (the adapter name dropped) from `state`, the model's
    trainable parameters by their names in `model`."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state)


def save_adapter(model: PeftModel, tensors: dict[str, torch.Tensor], path: str | Path, *, base: str) -> None:
    """Write the adapter in PEFT format: `tensors` (adapter_tensors) in float32, the config naming `base`."""
    Path(path).mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.peft_config["default"])
    config.base_model_name_or_path = base
    config.inference_mode = True
    config.save_pretrained(str(path))
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    save_file(weights, str(Path(path) / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def check_adapter(weights: dict[str, torch.Tensor], rank: int) -> None:
    """Raise ValueError unless `weights` is a LoRA adapter of `rank`: lora_A [r, in] and lora_B
    [out, r] in pairs, every value finite."""
    stems = {k.rsplit(".lora_", 1)[0] for k in weights}
    for stem in sorted(stems):
        a, b = weights.get(f"{stem}.lora_A.weight"), weights.get(f"{stem}.lora_B.weight")
        if a is None or b is None or len(weights) != 2 * len(stems):
            raise ValueError(f"adapter tensors of {stem} are not one lora_A.weight and one lora_B.weight")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(f"{stem}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} are not rank {rank}")
        for t in (a, b):
            if not all(torch.isfinite(x) for x in torch.aminmax(t)):
                raise ValueError(f"{stem}: contains NaN or inf")


# ----------------------------------------------------------------------------------------------
# Merging (export, and Stage 2's start after a LoRA Stage 1)


def _local_dir(model: str) -> Path:
    """A directory holding the model's files: the path itself, or the hub cache's snapshot."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]))


def _scale(config: dict[str, Any]) -> float:
    unsupported = [
        k for k in ("use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern") if config.get(k)
    ]
    if unsupported:
        raise UserError(f"merging supports plain LoRA adapters; this one sets {', '.join(unsupported)}")
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def merge_adapter(adapter: str | Path, out: str | Path, *, dtype: str) -> Path:
    """Write base + adapter as one Hugging Face checkpoint in `dtype` at `out`, file by file.

    Each adapted weight becomes W + (alpha / r) B A, computed in float32 and cast to `dtype` once:
    merging in bfloat16 would round most of a small update away. The base's other files come
    along (index, generation config), then the adapter directory's tokenizer; config.json says
    `dtype`. Written to a sibling directory first and renamed: `out` is whole or absent.
    """
    from evolve_ray.models.loading import DTYPES

    adapter, out = Path(adapter), Path(out)
    config = adapter_config(adapter)
    scale = _scale(config)
    base = _local_dir(adapter_base(adapter))
    lora = load_file(str(adapter / ADAPTER_WEIGHTS))
    deltas = {
        k.removeprefix(_PREFIX).removesuffix(".lora_A.weight") + ".weight": (
            lora[k],
            lora[k.replace("lora_A", "lora_B")],
        )
        for k in lora
        if k.endswith(".lora_A.weight")
    }
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    target = DTYPES[dtype]
    done = set()
    for f in sorted(base.glob("*.safetensors")):
        tensors = {}
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                if name in deltas:
                    a, b = deltas[name]
                    t = t.float() + scale * (b.float() @ a.float())
                    done.add(name)
                tensors[name] = t.to(target) if t.is_floating_point() else t
        save_file(tensors, str(tmp / f.name), metadata={"format": "pt"})
    if missing := sorted(set(deltas) - done):
        shutil.rmtree(tmp)
        raise UserError(f"merging {adapter}: the base {base} has no weights {missing[:3]}")
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, tmp / f.name)
    for f in adapter.iterdir():  # the run's tokenizer, saved beside the adapter
        if f.is_file() and not f.name.startswith("adapter_") and f.name != "README.md":
            shutil.copy2(f, tmp / f.name)
    model_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):  # transformers 5 writes dtype; older configs torch_dtype
        if key == "dtype" or key in model_config:
            model_config[key] = dtype
    (tmp / "config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
