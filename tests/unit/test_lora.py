"""LoRA's pure layer (models/lora.py, train/parallel.py, the transport): attaching adapters, their
PEFT checkpoint, the merge, the reference with the adapter off, and FSDP2/DDP steps over a peft
model on CPU (one-rank gloo), on the seeded tiny Llama policy (fp32 on disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from evolve_ray.config import ConfigError, load_config
from evolve_ray.models.loading import ModelLoadError, check_model_path, load_policy, load_tokenizer
from evolve_ray.models.lora import (
    ADAPTER_WEIGHTS,
    adapter_base,
    adapter_tensors,
    attach,
    base_record,
    check_adapter,
    merge_adapter,
    save_adapter,
    split_policy,
    vllm_max_rank,
)
from evolve_ray.sync.transport import adapter_dir, pack, unpack
from evolve_ray.train.batching import build_examples, loss_terms, reference_chunks
from evolve_ray.train.parallel import AdapterOff, load_trainable, trainable_state_dict, unwrap, wrap_model
from evolve_ray.train.step import round_frozen_logps
from tests.fsdp_case import FACTS, optimizer_steps
from tests.pairs import fact_pairs

IDS = torch.tensor([[5, 17, 42, 99, 3, 8, 60]])


def _cfg(policy: Path, *sets: str):
    return load_config(None, [f"model.policy={policy}", "training.lora.rank=8", *sets])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _random_b(model: PeftModel, seed: int = 0) -> None:
    """Give every lora_B a random value (a new adapter's B is zero: the policy equals the base)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05


def _saved_adapter(policy: Path, out: Path, *, seed: int = 0) -> tuple[PeftModel, Path]:
    cfg = _cfg(policy)
    model = attach(load_policy(str(policy)), cfg.training.lora, None)
    _random_b(model, seed)
    save_adapter(model, adapter_tensors(model, trainable_state_dict(model)), out, base=str(policy))
    return model, out


def test_lora_is_off_by_default_and_its_settings_need_a_rank() -> None:
    assert load_config(None).training.lora.rank == 0
    with pytest.raises(ConfigError, match="training.lora.alpha is set but training.lora.rank is 0"):
        load_config(None, ["training.lora.alpha=8"])
    with pytest.raises(ConfigError, match="above 512"):
        load_config(None, ["training.lora.rank=1024"])
    with pytest.raises(ConfigError, match="below 1"):
        load_config(None, ["training.lora.rank=8", "training.lora.dropout=1.0"])
    with pytest.raises(ConfigError, match="unknown config key 'training.lora.r'"):
        load_config(None, ["training.lora.r=8"])


def test_vllm_max_rank_is_the_smallest_accepted_rank_that_serves_it() -> None:
    assert [vllm_max_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]


def test_a_new_adapter_trains_alone_in_fp32_and_starts_equal_to_the_base(tiny_models) -> None:
    policy = tiny_models["policy"]
    cfg = _cfg(policy, "training.bf16=true")
    model = load_trainable(str(policy), cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    # q,k,v,o,gate,up,down in each of the 2 layers: an A and a B each.
    assert len(trainable) == 2 * 7 * 2 and all("lora_" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}  # the masters
    assert {p.dtype for p in frozen} == {torch.bfloat16}  # the base in the compute dtype
    base = load_policy(str(policy), dtype="bfloat16")
    assert torch.equal(_logits(model), _logits(base))  # B = 0


def test_the_reference_is_the_base_with_the_adapter_off(tiny_models) -> None:
    policy = tiny_models["policy"]
    model = attach(load_policy(str(policy)), _cfg(policy).training.lora, None)
    _random_b(model)
    reference = AdapterOff(model).eval()
    assert torch.equal(_logits(reference), _logits(load_policy(str(policy))))
    assert not torch.allclose(_logits(model), _logits(reference))  # the adapter is on again after
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_adapter_checkpoint_round_trips_and_names_its_base(tiny_models, tmp_path) -> None:
    policy = tiny_models["policy"]
    model, out = _saved_adapter(policy, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(policy) and config["r"] == 8
    with safe_open(str(out / ADAPTER_WEIGHTS), "pt") as f:
        keys = list(f.keys())
        assert {str(f.get_slice(k).get_dtype()) for k in keys} == {"F32"}
    assert all(k.startswith("base_model.model.model.layers.") for k in keys)  # PEFT's names
    assert split_policy(str(out)) == (str(policy), str(out)) and split_policy(str(policy)) == (str(policy), None)
    # The trainer resumes from it: the same policy, the adapter trainable again.
    again = load_trainable(str(out), _cfg(policy))
    assert torch.allclose(_logits(again), _logits(model), atol=1e-6)
    assert sum(p.requires_grad for p in again.parameters()) == 28
    # And transformers loads it as it is (base + adapter through its peft integration).
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(out)), _logits(model), atol=1e-6)
    check_model_path(str(out), what="model.policy")
    with pytest.raises(Exception, match="rank 8 on"):
        load_trainable(str(out), load_config(None, [f"model.policy={policy}", "training.lora.rank=4"]))


def test_a_base_inside_the_run_is_recorded_relative_so_a_moved_run_finds_it(tiny_models, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_models["policy"], run / "sft" / "merged")
    ckpt = run / "checkpoints" / "r000"
    record = base_record(str(run / "sft" / "merged"), ckpt, run)
    assert record == "../../sft/merged"
    assert base_record(str(tiny_models["policy"]), ckpt, run) == str(tiny_models["policy"])  # outside: as given
    assert base_record("org/model", ckpt, run) == "org/model"  # a hub id
    model = attach(load_policy(str(run / "sft" / "merged")), _cfg(run).training.lora, None)
    save_adapter(model, adapter_tensors(model, trainable_state_dict(model)), ckpt, base=record)
    moved = tmp_path / "moved"
    run.rename(moved)
    assert adapter_base(moved / "checkpoints" / "r000") == str((moved / "sft" / "merged").resolve())


def test_an_adapter_without_weights_or_base_is_refused_in_one_line(tiny_models, tmp_path) -> None:
    _, out = _saved_adapter(tiny_models["policy"], tmp_path / "adapter")
    (out / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match="LoRA adapter without its weights"):
        check_model_path(str(out), what="model.policy")
    _, out = _saved_adapter(tiny_models["policy"], tmp_path / "adapter2")
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelLoadError, match="the base of the LoRA adapter .* path does not exist"):
        check_model_path(str(out), what="model.policy")


def test_merge_equals_peft_merge_in_fp32_and_is_cast_once(tiny_models, tmp_path) -> None:
    """W + (alpha/r) B A in float32, as peft's merge_and_unload computes it; then cast to the
    target dtype, config.json saying so, the run's tokenizer beside it."""
    policy = tiny_models["policy"]
    model, out = _saved_adapter(policy, tmp_path / "adapter")
    load_tokenizer(str(policy)).save_pretrained(out)
    peft_merged = PeftModel.from_pretrained(load_policy(str(policy)), out).merge_and_unload().state_dict()
    merged = merge_adapter(out, tmp_path / "merged", dtype="float32")
    ours = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    assert ours.keys() == peft_merged.keys()
    for k in ours:
        assert torch.allclose(ours[k], peft_merged[k], atol=1e-6), k
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(merged)), _logits(model), atol=1e-5)
    assert load_tokenizer(str(merged)).chat_template
    half = merge_adapter(out, tmp_path / "merged_bf16", dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor(name), peft_merged[name].to(torch.bfloat16))
    assert not (tmp_path / ".merged.partial").exists()


def test_check_adapter_wants_pairs_of_the_rank_and_finite_values() -> None:
    a, b = torch.zeros(8, 64), torch.zeros(128, 8)
    good = {"m.q_proj.lora_A.weight": a, "m.q_proj.lora_B.weight": b}
    check_adapter(good, 8)
    with pytest.raises(ValueError, match="not rank 4"):
        check_adapter(good, 4)
    with pytest.raises(ValueError, match="not one lora_A.weight and one lora_B.weight"):
        check_adapter({"m.q_proj.lora_A.weight": a}, 8)
    bad = b.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        check_adapter(good | {"m.q_proj.lora_B.weight": bad}, 8)


@pytest.mark.parametrize("transport", ["object_store", "disk"])
def test_an_adapter_payload_becomes_a_peft_directory(tiny_models, tmp_path, transport: str) -> None:
    model, out = _saved_adapter(tiny_models["policy"], tmp_path / "ckpt")
    tensors = adapter_tensors(model, trainable_state_dict(model))
    config = (out / "adapter_config.json").read_text()
    payload = pack(tensors, version=4, transport=transport, path=str(out), adapter_config=config)
    assert payload.nbytes == (sum(t.numel() * 4 for t in tensors.values()) if transport == "object_store" else 0)
    weights = dict(unpack(payload))
    assert weights.keys() == tensors.keys() and all(torch.equal(weights[k], tensors[k]) for k in tensors)
    path = Path(adapter_dir(payload, weights, tmp_path / "scratch"))
    assert path == out if transport == "disk" else path.name.startswith("v4-")
    loaded = PeftModel.from_pretrained(load_policy(str(tiny_models["policy"])), path)
    assert torch.allclose(_logits(loaded), _logits(model), atol=1e-6)


def _steps(model: torch.nn.Module, reference: torch.nn.Module | None, cfg, tok, steps: int):
    """Frozen log-probs, then `steps` optimizer steps (batch 4, one rank), as a worker runs them."""
    t = cfg.training
    examples, terms = build_examples(fact_pairs(FACTS), tok, t), loss_terms(t)
    chunks = reference_chunks(len(examples), micro_batch=2, rank=0, world_size=1)
    dev = torch.device("cpu")
    kw = {"chunks": chunks, "pad_id": tok.pad_token_id, "device": dev}
    frozen = round_frozen_logps(model, reference, examples, terms, t, **kw)
    history, _ = optimizer_steps(
        model, t, examples, frozen, terms, epochs=steps, grad_accum=2, pad_id=tok.pad_token_id, device=dev, limit=steps
    )
    after = round_frozen_logps(model, reference, examples, terms, t, **kw)
    return [h["train/loss"] for h in history], frozen, after


@pytest.mark.parametrize(("strategy", "bf16"), [("fsdp", True), ("ddp", True)])
def test_lora_steps_train_the_adapter_alone_against_the_base(
    one_rank_gloo, tiny_models, strategy: str, bf16: bool
) -> None:
    """FSDP2 fully_shard over a peft model (gloo, fp32 and bf16 compute) and DDP with autocast:
    the loss falls, only the adapter moves, and the fixed reference (the base, adapter off) stays
    put, although it runs first: FSDP2 fixes its gradient dtype at that first forward."""
    policy = str(tiny_models["policy"])
    sets = [f"training.strategy={strategy}", f"training.bf16={str(bf16).lower()}", "training.reference=fixed"]
    cfg = _cfg(policy, *sets, "training.loss=evolve", "training.gamma=0", "training.lr=1e-3", "training.batch_size=4")
    model = wrap_model(load_trainable(policy, cfg), cfg.training, torch.device("cpu"), trainable=True)
    if strategy == "fsdp":
        assert all(isinstance(p, DTensor) for p in model.parameters())
    before = {n: v.clone() for n, v in trainable_state_dict(model).items()}
    base_before = {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if not p.requires_grad}
    losses, frozen, after = _steps(model, AdapterOff(unwrap(model)), cfg, load_tokenizer(policy), steps=6)
    assert losses[-1] < 0.8 * losses[0]
    assert frozen.ref is not None and after.ref is not None and torch.equal(frozen.ref, after.ref)
    state = trainable_state_dict(model)
    assert state.keys() == before.keys() and {v.dtype for v in state.values()} == {torch.float32}
    assert all(not torch.equal(state[n], before[n]) for n in state if "lora_B" in n)
    base_after = {n: p.detach() for n, p in unwrap(model).named_parameters() if not p.requires_grad}
    assert all(torch.equal(base_after[n], base_before[n]) for n in base_before)


def test_a_run_starting_from_an_adapter_must_train_that_adapter(tmp_path) -> None:
    """Refused before any actor starts (loop._drive_logged), not inside the Ray Train workers."""
    import json

    import pytest

    from evolve_ray.config import ConfigError, load_config
    from evolve_ray.driver.preflight import check_adapter_start

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(ConfigError, match="is a LoRA adapter \\(rank 8\\): set training.lora.rank=8"):
        check_adapter_start(load_config(), str(adapter))
    with pytest.raises(ConfigError, match="rank 8 on \\['q_proj', 'v_proj'\\], but training.lora asks for rank 4"):
        check_adapter_start(load_config(None, ["training.lora.rank=4"]), str(adapter))
    matching = ["training.lora.rank=8", "training.lora.target_modules=[q_proj,v_proj]"]
    check_adapter_start(load_config(None, matching), str(adapter))  # the same adapter: fine
    with pytest.raises(ConfigError, match="reference=fixed with training.lora"):
        check_adapter_start(load_config(None, [*matching, "training.reference=fixed"]), str(adapter))
    check_adapter_start(load_config(), str(tmp_path))  # a full model: nothing to check
