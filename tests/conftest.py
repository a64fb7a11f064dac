"""Session fixtures shared by every test layer: tiny local models (no hub), one engine cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No hub is reachable from test machines: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded tiny Llama policy and reward model, each saved with the byte-level tokenizer."""
    from evolve_ray.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tokenizer(tiny_models: dict[str, Path]):
    from evolve_ray.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_models["policy"]))
