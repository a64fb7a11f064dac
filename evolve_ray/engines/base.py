"""The inference-engine interface shared by the vLLM and transformers backends.

Engines take token ids (never strings: a string prompt may gain an extra BOS) and return token
ids and text. Weight loads are validated against the checkpoint's parameter names and shapes
before they touch the engine, so a bad payload leaves the old weights serving.
No ray here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class GenOutput:
    token_ids: list[int]
    text: str
    finish_reason: str


class WeightLoadError(RuntimeError):
    """A weight payload that does not match the served model; nothing was loaded."""


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, seeds: list[int]) -> list[GenOutput]: ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None: ...

    def load_adapter(self, path: str, name: str) -> None:
        """Serve the LoRA adapter at `path` (PEFT format) from now on, in place of the previous one,
        under a new name built from `name` (a name is never reused: no stale cached prefixes)."""
        ...


def safetensors_files(model: str | Path) -> list[Path]:
    """A checkpoint's safetensors files: those of a folder, or a hub id's in the Hugging Face cache
    (where loading it, by vLLM or transformers, put them): the single file or the index's shards."""
    if Path(model).is_dir():
        return sorted(Path(model).glob("*.safetensors"))
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(str(model), "model.safetensors.index.json")
    if isinstance(index, str):
        shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values())
        return [Path(index).parent / shard for shard in sorted(shards)]
    single = try_to_load_from_cache(str(model), "model.safetensors")
    return [Path(single)] if isinstance(single, str) else []


def checkpoint_shapes(model: str | Path) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes from a checkpoint's safetensors headers (no tensor is read);
    `model` is a folder or a loaded hub id (safetensors_files). None found is an error, not {}: a
    push checked against no names would be refused whatever it held."""
    files = safetensors_files(model)
    if not files:
        raise WeightLoadError(
            f"no safetensors weights found for {model} (a folder's *.safetensors, or a hub id's files in the "
            "Hugging Face cache): weight pushes are checked against their names and shapes"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def validate_weights(weights: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise WeightLoadError unless `weights` has exactly the expected names and shapes."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise WeightLoadError(
            f"weight names differ from the served model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, t in weights.items():
        if tuple(t.shape) != expected[name]:
            raise WeightLoadError(f"{name}: shape {tuple(t.shape)} != served {expected[name]}")
        # min and max in one pass carry any NaN or inf (a tenth of isfinite(t).all()'s cost: no mask).
        if t.is_floating_point() and t.numel() and not all(torch.isfinite(x) for x in torch.aminmax(t)):
            raise WeightLoadError(f"{name}: contains NaN or inf")
