"""Tiny models: deterministic, loadable through the real loading code, and clear load errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from evolve_ray.models.loading import ModelLoadError, load_policy, load_reward, load_tokenizer
from evolve_ray.models.tiny import TinySpec, build_tiny


def test_build_is_deterministic(tmp_path) -> None:
    a = build_tiny(tmp_path / "a")
    b = build_tiny(tmp_path / "b")
    wa = load_file(a["policy"] / "model.safetensors")
    wb = load_file(b["policy"] / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_families_load_and_have_cpu_friendly_heads(tmp_path, family) -> None:
    paths = build_tiny(tmp_path, TinySpec(family=family))
    policy = load_policy(str(paths["policy"]))
    reward = load_reward(str(paths["reward"]))
    cfg = policy.config
    assert cfg.model_type == family
    assert cfg.hidden_size // cfg.num_attention_heads in {32, 64, 80, 96, 112, 128}  # vLLM CPU head sizes
    assert reward.config.num_labels == 1
    tok = load_tokenizer(str(paths["policy"]))
    ids = tok.apply_chat_template([{"role": "user", "content": "12+34="}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"])
    assert tok.decode(ids) == "<|user|>12+34=<|end|><|assistant|>"
    assert max(ids) < cfg.vocab_size


def test_loading_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_policy(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_policy(str(tmp_path / "empty"))


def test_tokenizer_without_chat_template_is_refused(tmp_path, tiny_models) -> None:
    tok = load_tokenizer(str(tiny_models["policy"]))
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "notemplate")
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_tokenizer(str(tmp_path / "notemplate"))
