"""The memory plan against hand computations for the 8B recipe (jobs/configs/llama8b_8gpu.yaml).

Llama-3.1-8B's published config.json (hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV
heads of 128, vocab 128256, untied embeddings) is written to a directory with no weights, and so
is the reward model's (the same decoder as LlamaForSequenceClassification, one label).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import yaml

from evolve_ray.cli import main
from evolve_ray.config import Config, ConfigError, load_config
from evolve_ray.driver.memory_plan import (
    GIB,
    ModelShape,
    Plan,
    Unknown,
    check_plan,
    format_plan,
    plan,
    plan_for,
    read_shape,
)
from evolve_ray.driver.preflight import check_fits
from tests.unit.cli_helpers import assert_one_line_error, run_cli

RECIPE = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "llama8b_8gpu.yaml"
LORA_RECIPE = RECIPE.with_name("llama8b_8gpu_lora.yaml")
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
}
# One block: q and o 4096x4096, k and v 4096x1024 (8 KV heads x 128), gate/up/down 3 x 4096x14336,
# two RMSNorms of 4096: 2*16_777_216 + 2*4_194_304 + 176_160_768 + 8_192 = 218_112_000.
BLOCK = 218_112_000
# Embeddings and the untied head, 128256 x 4096 each, and the final norm: 1_050_677_248.
ROOT = 2 * 128_256 * 4_096 + 4_096
P = 32 * BLOCK + ROOT  # 8_030_261_248, the published count
# The reward model: no LM head, a 4096 -> 1 score head (no bias): 7_504_924_672 + 4096.
P_REWARD = 32 * BLOCK + 128_256 * 4_096 + 4_096 + 4_096


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("llama8b")
    policy, reward = root / "policy", root / "reward"
    policy.mkdir()
    reward.mkdir()
    (policy / "config.json").write_text(json.dumps(LLAMA_8B))
    reward_config = LLAMA_8B | {"architectures": ["LlamaForSequenceClassification"], "num_labels": 1}
    (reward / "config.json").write_text(json.dumps(reward_config))
    return str(policy), str(reward)


# The recipe ships grad_accum 16; at 8 (micro-batches of 3 prompts) its trainer stops fitting 80 GiB,
# the case most hand computations below use.
AT_8 = "training.grad_accum=8"


def recipe(dirs: tuple[str, str], *sets: str) -> Config:
    return load_config(RECIPE, [f"model.policy={dirs[0]}", f"model.reward={dirs[1]}", *sets])


def row_parts(p: Plan, role: str) -> dict[str, float]:
    (row,) = [r for r in p.rows if r.role == role]
    return dict(row.parts)


def test_parameter_counts_are_llama_3_1_8b(llama_dirs: tuple[str, str]) -> None:
    """8_030_261_248 and 7_504_928_768 parameters, the blocks counted apart from the root."""
    assert P == 8_030_261_248 and P_REWARD == 7_504_924_672 + 4_096
    policy = read_shape(llama_dirs[0], reward=False)
    assert isinstance(policy, ModelShape)
    assert dataclasses.replace(policy, linears=()) == ModelShape(
        params=P, root_params=ROOT, block_params=BLOCK, layers=32, hidden=4096, vocab=128_256
    )
    assert policy.linears == (  # (name, in, out, count): what LoRA's sizes are made of
        ("down_proj", 14_336, 4_096, 32),
        ("gate_proj", 4_096, 14_336, 32),
        ("k_proj", 4_096, 1_024, 32),
        ("lm_head", 4_096, 128_256, 1),
        ("o_proj", 4_096, 4_096, 32),
        ("q_proj", 4_096, 4_096, 32),
        ("up_proj", 4_096, 14_336, 32),
        ("v_proj", 4_096, 1_024, 32),
    )
    reward = read_shape(llama_dirs[1], reward=True)
    assert isinstance(reward, ModelShape) and reward.params == P_REWARD


def test_recipe_needs_per_role(llama_dirs: tuple[str, str]) -> None:
    """The recipe: bf16 inference, kv_cache_mib 32768, 3 FSDP ranks, batch 64, grad_accum 8,
    max_len 4096, bf16 compute, activation checkpointing, evolve with gamma 0 (terms direct and
    refine: T = 2), reference refresh (none held).

    generator: 2P = 16_060_522_496 B = 14.96 GiB + 32 GiB cache = 46.96 GiB
    scorer:    2 P_reward = 15_009_857_536 B = 13.98 GiB + 32 GiB = 45.98 GiB
    train worker: micro = ceil(64 / (3 x 8)) = 3 prompts, b = 6 sequences of S = 4096:
      weights fp32 4P/3 = 9.97 GiB, grads 9.97, adam 8P/3 = 19.94
      gathered bf16 (ROOT + BLOCK) x 2 = 2_537_578_496 B = 2.36 GiB
      activations T x L x b x S x H x 2 = 2 x 32 x 6 x 4096 x 4096 x 2 = 12.0 GiB
      block recompute 17 x 6 x 4096 x 4096 x 2 = 3.1875 GiB
      logits fp32 T x b x S x V x 4 = 2 x 6 x 4096 x 128256 x 4 = 23.48 GiB
      total 80.92 GiB
    """
    cfg = recipe(llama_dirs, AT_8)
    t = cfg.training
    assert (t.batch_size, t.grad_accum, t.num_workers, t.max_len, t.gamma) == (64, 8, 3, 4096, 0.0)
    p = plan_for(cfg)
    assert row_parts(p, "generator") == {"weights bf16": 2 * P, "kv cache": 32 * GIB}
    assert row_parts(p, "scorer") == {"weights bf16": 2 * P_REWARD, "kv cache": 32 * GIB}
    trainer = row_parts(p, "train worker")
    assert trainer == pytest.approx(
        {
            "weights fp32": 4 * P / 3,
            "grads fp32": 4 * P / 3,
            "adam fp32": 8 * P / 3,
            "gathered bf16": (ROOT + BLOCK) * 2,
            "activations": 2 * 32 * 6 * 4096 * 4096 * 2,
            "block recompute": 17 * 6 * 4096 * 4096 * 2,
            "logits fp32": 2 * 6 * 4096 * 128_256 * 4,
        }
    )
    gib = {r.role: round(r.need / GIB, 2) for r in p.rows}
    assert gib == {"generator": 46.96, "scorer": 45.98, "train worker": 80.92}


def test_the_recipe_trainer_is_refused_on_80_gib_and_fits_with_smaller_micro_batches(
    llama_dirs: tuple[str, str],
) -> None:
    """At grad_accum 16: micro 2, b = 4: activations 8 GiB, recompute 2.125, logits 15.66:
    39.89 + 2.36 + 8 + 2.125 + 15.66 = 68.0 GiB."""
    p = plan_for(recipe(llama_dirs, "cluster.gpu_memory_gib=80", AT_8))
    assert [r.fits for r in p.rows] == ["yes", "yes", "no"]
    with pytest.raises(ConfigError) as e:
        check_plan(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("each train worker needs 80.9 GiB per GPU")
    assert "a GPU has 80.0 GiB (cluster.gpu_memory_gib)" in msg and "training.grad_accum" in msg
    smaller = plan_for(recipe(llama_dirs, "cluster.gpu_memory_gib=80", "training.grad_accum=16"))
    assert round(smaller.rows[2].need / GIB, 1) == 68.0
    check_plan(smaller)


def test_ddp_holds_everything_on_each_rank(llama_dirs: tuple[str, str]) -> None:
    """DDP: 16P = 119.66 GiB of fp32 state alone on every rank: refused even on a 141 GiB H200,
    where FSDP over 3 ranks (80.9 GiB) fits."""
    cfg = recipe(llama_dirs, "cluster.gpu_memory_gib=141", "training.strategy=ddp", AT_8)
    parts = row_parts(plan_for(cfg), "train worker")
    assert parts["weights fp32"] + parts["grads fp32"] + parts["adam fp32"] == 16 * P
    assert "gathered bf16" not in parts
    with pytest.raises(ConfigError, match=r"^each train worker needs 158\.\d GiB .*set training\.strategy=fsdp"):
        check_plan(plan_for(cfg))
    check_plan(plan_for(recipe(llama_dirs, "cluster.gpu_memory_gib=141", AT_8)))


def test_a_small_gpu_refuses_the_first_role_that_cannot_fit(llama_dirs: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^each generator needs 47\.0 GiB per GPU .* a GPU has 24\.0 GiB"):
        check_plan(plan_for(recipe(llama_dirs, "cluster.gpu_memory_gib=24")))


def test_a_fraction_of_a_gpu_gets_that_fraction_of_its_memory(llama_dirs: tuple[str, str]) -> None:
    """Half a GPU of 80 GiB is 40 GiB: the generator's 47.0 GiB does not fit; 94 GiB would."""
    cfg = recipe(llama_dirs, "cluster.gpu_memory_gib=80", "generation.gpus_per_generator=0.5")
    with pytest.raises(ConfigError, match=r"^each generator needs 47\.0 GiB .* its 0\.5-GPU share is 40\.0 GiB"):
        check_plan(plan_for(cfg))
    cfg = recipe(llama_dirs, "cluster.gpu_memory_gib=94", "generation.gpus_per_generator=0.5")
    assert plan_for(cfg).rows[0].fits == "yes"


def test_fixed_reference_and_no_checkpointing(llama_dirs: tuple[str, str]) -> None:
    """reference=fixed holds P in the compute dtype over 3 shards: 2P/3; without checkpointing
    every block keeps 17 x b x S x H x 2 bytes per term: 2 x 32 x 17 x 6 x 4096 x 4096 x 2."""
    cfg = recipe(llama_dirs, "training.reference=fixed", "training.activation_checkpointing=false", AT_8)
    parts = row_parts(plan_for(cfg), "train worker")
    assert parts["reference bf16"] == pytest.approx(2 * P / 3)
    assert parts["activations"] == 2 * 32 * 17 * 6 * 4096 * 4096 * 2 and "block recompute" not in parts


# A rank-16 adapter on q, k, v, o, gate, up, down of each of 32 blocks: 16 x (in + out) each,
# 16 x (8192 + 5120 + 5120 + 8192 + 3 x 18432) = 1_310_720 per block.
ADAPTER_16 = 32 * 1_310_720  # 41_943_040


def test_lora_recipe_fits_on_2_training_gpus_and_gives_the_freed_one_to_generation(
    llama_dirs: tuple[str, str],
) -> None:
    """llama8b_8gpu_lora.yaml: 5 generators + 1 scorer + 2 DDP train workers = 8 GPUs.

    train worker (DDP: nothing sharded), micro = ceil(64 / (2 x 16)) = 2 prompts, b = 4:
      frozen base bf16 2P = 14.96 GiB
      adapter fp32 4A = 0.156 GiB, grads 4A = 0.156, adam 8A = 0.3125 (A = 41_943_040: 0.625 in all)
      activations 2 x 32 x 4 x 4096 x 4096 x 2 = 8 GiB, recompute 17 x 4 x 4096 x 4096 x 2 = 2.125
      logits 2 x 4 x 4096 x 128256 x 4 = 15.66 GiB; no reference copy (the base, adapter off)
      total 41.36 GiB, against 68.0 GiB per GPU on 3 FSDP GPUs for full fine-tuning.
    generator: 2P + the adapter slot at vLLM's max_lora_rank 16, in bf16: 2A = 0.078 GiB.
    """
    cfg = load_config(LORA_RECIPE, [f"model.policy={llama_dirs[0]}", f"model.reward={llama_dirs[1]}"])
    t, g, s = cfg.training, cfg.generation, cfg.scoring
    assert (t.lora.rank, t.strategy, t.num_workers, t.grad_accum) == (16, "ddp", 2, 16)
    assert g.num_generators * g.gpus_per_generator + s.num_scorers * s.gpus_per_scorer + t.num_workers == 8
    p = plan_for(cfg)
    check_plan(p)
    assert [r.fits for r in p.rows] == ["yes", "yes", "yes"]
    assert row_parts(p, "train worker") == pytest.approx(
        {
            "frozen base bf16": 2 * P,
            "adapter fp32": 4 * ADAPTER_16,
            "adapter grads fp32": 4 * ADAPTER_16,
            "adapter adam fp32": 8 * ADAPTER_16,
            "activations": 2 * 32 * 4 * 4096 * 4096 * 2,
            "block recompute": 17 * 4 * 4096 * 4096 * 2,
            "logits fp32": 2 * 4 * 4096 * 128_256 * 4,
        }
    )
    assert row_parts(p, "generator") == {
        "weights bf16": 2 * P,
        "adapter slot bf16": 2 * ADAPTER_16,
        "kv cache": 32 * GIB,
    }
    gib = {r.role: round(r.need / GIB, 2) for r in p.rows}
    assert gib == {"generator": 47.04, "scorer": 45.98, "train worker": 41.36}
    full = plan_for(recipe(llama_dirs, "training.grad_accum=16"))  # the full recipe at the same micro-batch
    assert round(full.rows[2].need / GIB, 1) == 68.0


def test_lora_holds_no_reference_copy_and_shards_the_base_under_fsdp(llama_dirs: tuple[str, str]) -> None:
    """reference=fixed with LoRA is the base with the adapter off (no part); FSDP over 2 ranks
    halves the frozen base and the adapter's state, and gathers a block and the root."""
    sets = [f"model.policy={llama_dirs[0]}", f"model.reward={llama_dirs[1]}", "training.reference=fixed"]
    cfg = load_config(LORA_RECIPE, [*sets, "training.strategy=fsdp", "training.lora.target_modules=[q_proj,v_proj]"])
    parts = row_parts(plan_for(cfg), "train worker")
    assert not any(name.startswith("reference") for name in parts)
    adapter = 32 * 16 * ((4096 + 4096) + (4096 + 1024))  # q and v only
    assert parts["frozen base bf16"] == pytest.approx(P)  # 2P / 2 ranks
    assert parts["adapter adam fp32"] == pytest.approx(8 * adapter / 2)
    assert parts["gathered bf16"] == (ROOT + BLOCK) * 2


def test_cpu_totals_against_a_local_cluster() -> None:
    """Defaults on 2 CPUs: 1 x 0.5 + 1 x 0.25 + 2 x 0.5 = 1.75 fits; 2 generators make 2.25."""
    shape = ModelShape(params=1000, root_params=200, block_params=400, layers=2, hidden=8, vocab=16)
    fits = plan(load_config(), policy=shape, reward=shape, gpu_memory_bytes=None, cluster={"CPU": 2.0})
    assert [a.total for a in fits.asks] == [0.0, 1.75]
    assert [r.fits for r in fits.rows] == ["cpu", "cpu", "cpu"]
    check_plan(fits)
    cfg = load_config(None, ["generation.num_generators=2"])
    with pytest.raises(ConfigError) as e:
        check_plan(plan(cfg, policy=shape, reward=shape, gpu_memory_bytes=None, cluster={"CPU": 2.0}))
    msg = str(e.value)
    assert msg.startswith("the run asks for 2.25 CPUs (generation.num_generators x cpus_per_generator = 2 x 0.5")
    assert "but the cluster has 2;" in msg and "cluster.num_cpus" in msg and "\n" not in msg
    remote = load_config(None, ["generation.num_generators=2", "cluster.address=auto"])
    with pytest.raises(ConfigError, match="add nodes"):
        check_plan(plan(remote, policy=shape, reward=shape, gpu_memory_bytes=None, cluster={"CPU": 2.0}))


def test_gpu_totals_against_the_cluster(llama_dirs: tuple[str, str]) -> None:
    """4 generators x 1 + 1 scorer x 1 + 3 workers x 1 = 8 GPUs against 7 (check_fits: the driver's call)."""
    cfg = recipe(llama_dirs, "cluster.gpu_memory_gib=141")
    with pytest.raises(ConfigError, match=r"^the run asks for 8 GPUs .* but the cluster has 7;"):
        check_fits(cfg, llama_dirs[0], llama_dirs[1], {"CPU": 64.0, "GPU": 7.0})
    assert check_fits(cfg, llama_dirs[0], llama_dirs[1], {"CPU": 64.0, "GPU": 8.0}).asks[1].total == 40.25


def test_unknown_models_and_memory_refuse_nothing(tmp_path: Path) -> None:
    """A config that cannot be read says so in its rows; an unknown GPU memory shows needs only."""
    missing = str(tmp_path / "no-model")
    cfg = load_config(None, [f"model.policy={missing}", f"model.reward={missing}", "training.use_gpu=true"])
    p = plan_for(cfg, cluster={"CPU": 2.0, "GPU": 2.0}, policy_path=missing, reward_path=missing)
    assert [r.fits for r in p.rows] == ["cpu", "cpu", "unknown"]
    assert all("cannot read the config of" in r.note for r in p.rows)
    assert "cannot read the config of" in format_plan(p)
    check_plan(p)
    shape = ModelShape(params=10**10, root_params=10**10, block_params=0, layers=1, hidden=8, vocab=16)
    gpu = load_config(None, ["generation.gpus_per_generator=1"])
    unknown = plan(gpu, policy=shape, reward=Unknown("offline"), gpu_memory_bytes=None, cluster=None)
    assert [r.fits for r in unknown.rows] == ["unknown", "cpu", "cpu"]
    check_plan(unknown)


def test_a_verifier_scorer_holds_no_model_but_reserves_its_cpus() -> None:
    shape = ModelShape(params=1000, root_params=200, block_params=400, layers=2, hidden=8, vocab=16)
    cfg = load_config(None, ["scoring.kind=verifier"])
    p = plan(cfg, policy=shape, reward=None, gpu_memory_bytes=None, cluster=None)
    assert p.rows[1].parts == () and "no model (verifier)" in format_plan(p)
    assert p.asks[1].parts[1] == ("scoring.num_scorers x cpus_per_scorer", 1, 0.25)


def test_a_verifier_run_that_picks_best_of_n_counts_the_picking_reward_model() -> None:
    """Best-of-N under the verifier is picked by a reward model the scorers load: the plan holds it
    (here the built-in one, read from its config), and only then."""
    sets = ["scoring.kind=verifier", "scoring.backend=vllm", "scoring.gpus_per_scorer=1", "cluster.gpu_memory_gib=80"]
    picking = plan_for(load_config(None, [*sets, "run.eval_strategies=[chain,parallel]"]))
    assert row_parts(picking, "scorer")["weights fp32"] > 0
    plain = plan_for(load_config(None, [*sets, "run.eval_strategies=[chain]"]))
    assert plain.rows[1].parts == ()


@pytest.fixture
def restore_logging():
    handlers = list(logging.getLogger().handlers)
    yield
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_print_config_prints_the_plan_as_yaml_comments(llama_dirs: tuple[str, str], capsys) -> None:
    sets = [f"model.policy={llama_dirs[0]}", f"model.reward={llama_dirs[1]}", "training.grad_accum=16"]
    rc = main(["print-config", "--config", str(RECIPE), *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert rc == 0
    assert yaml.safe_load(out)["training"]["grad_accum"] == 16  # the plan's lines are comments
    assert "GPU memory: 80.0 GiB (cluster.gpu_memory_gib)" in out
    assert any(line.startswith("# train worker") and " 68.0  yes " in line for line in out.splitlines())
    assert "# CPU             40.25        -" in out


def test_print_config_refuses_what_cannot_fit_in_one_line(llama_dirs: tuple[str, str]) -> None:
    r = run_cli("print-config", "--config", str(RECIPE), "--set", f"model.policy={llama_dirs[0]}",
                "--set", f"model.reward={llama_dirs[1]}", "--set", "cluster.gpu_memory_gib=24")  # fmt: skip
    assert_one_line_error(r, "each generator needs 47.0 GiB per GPU")
    assert "# generator         4         1     47.0  no " in r.stdout
