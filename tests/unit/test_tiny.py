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


def test_chat_models_are_bf16_on_disk_with_pad_equal_to_eos(chat_models) -> None:
    """Shaped like a Llama-3 chat model and its reward model: bfloat16 safetensors and configs,
    pad == EOS == <|eot_id|> in the tokenizer, both configs and the generation config."""
    import json

    tok = load_tokenizer(str(chat_models["policy"]))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.eos_token == tok.pad_token == "<|eot_id|>" and tok.pad_token_id == tok.eos_token_id == eot
    assert tok.bos_token == "<|begin_of_text|>"
    for name in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert (
            tok.convert_tokens_to_ids(name) != tok.unk_token_id
            and len(tok(name, add_special_tokens=False)["input_ids"]) == 1
        )
    assert tok("12345", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(d) for d in "12345"]
    for path in chat_models.values():
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["dtype"] == "bfloat16" and cfg["pad_token_id"] == cfg["eos_token_id"] == eot
        assert cfg["hidden_size"] // cfg["num_attention_heads"] in {32, 64}  # vLLM CPU head sizes
        weights = load_file(path / "model.safetensors")
        assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    generation = json.loads((chat_models["policy"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == eot


def test_chat_template_renders_llama3_headers(chat_models) -> None:
    tok = load_tokenizer(str(chat_models["reward"]))
    msgs = [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "46"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n12+34=<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n46<|eot_id|>"
    )
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("12+34=<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # one BOS: the template's
    assert ids[-1] == tok.eos_token_id == tok.pad_token_id  # a trailing EOS that a pad search would skip


def test_chat_models_round_trip_through_the_loaders(chat_models) -> None:
    """load_policy/load_reward give the saved bf16 weights exactly, in bf16 or upcast to float32."""
    tok = load_tokenizer(str(chat_models["policy"]))
    ids = torch.tensor(
        [list(tok.apply_chat_template([{"role": "user", "content": "3+4="}], tokenize=True)["input_ids"])]
    )
    policy = load_policy(str(chat_models["policy"]), dtype="bfloat16")
    saved = load_file(chat_models["policy"] / "model.safetensors")
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in saved.items())
    assert policy.config.model_type == "llama" and type(policy).__name__ == "LlamaForCausalLM"
    reward = load_reward(str(chat_models["reward"]), dtype="float32")
    saved = load_file(chat_models["reward"] / "model.safetensors")
    assert all(torch.equal(reward.state_dict()[k], v.float()) for k, v in saved.items())
    assert type(reward).__name__ == "LlamaForSequenceClassification" and reward.config.num_labels == 1
    with torch.no_grad():
        assert policy(ids).logits.shape == (1, ids.shape[1], policy.config.vocab_size)
        assert torch.isfinite(reward(ids).logits).all()


def test_build_tiny_command_writes_llama3_style_models(tmp_path) -> None:
    """`evolve-ray build-tiny --style llama3`: bf16 weights, pad == EOS; a Qwen2 family is refused."""
    from safetensors import safe_open

    from evolve_ray.cli import main
    from evolve_ray.models.loading import load_tokenizer

    assert main(["build-tiny", str(tmp_path / "m"), "--style", "llama3"]) == 0
    tok = load_tokenizer(str(tmp_path / "m" / "reward"))
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|eot_id|>")
    with safe_open(str(tmp_path / "m" / "policy" / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    assert main(["build-tiny", str(tmp_path / "q"), "--style", "llama3", "--family", "qwen2"]) == 2
