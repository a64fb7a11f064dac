"""One meaning per option: validate() refuses, in one line naming the option and why, numbers that
are not finite, values outside what the engines accept, collections that can make no pair,
tensor parallelism that does not match the GPUs, unknown tasks, and an option set explicitly
where the loss, rule, strategy or backend gives it no effect (docs/options.md lists where each
applies; a test keeps that file current)."""

from __future__ import annotations

import re
import typing

import pytest

from evolve_ray.config import (
    DEMO_SETS,
    Config,
    ConfigError,
    DataConfig,
    dump_yaml,
    load_config,
    overrides_of,
    replace,
)
from evolve_ray.driver.builders import TASKS
from evolve_ray.experiments.comparison import SMOKE_SETS, arms, seed_sets
from evolve_ray.options import DOC, All, AnyOf, Cond, fields, options_markdown, value_of
from evolve_ray.tasks.arith import ArithTask

from .cli_helpers import assert_one_line_error, run_cli

# ----------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "item",
    [
        "training.lr=.nan",
        "training.lr=.inf",
        "training.lr=1e400",  # read as a decimal, it overflows to inf
        "training.lr=-.inf",
        "generation.temperature=.nan",
        "training.beta=.inf",
        "selection.min_margin=.inf",
        "selection.tie_tolerance=.inf",  # inf: no pair would ever be made
        "selection.min_chosen_score=.nan",  # an optional float
        "training.max_grad_norm=.nan",
        "cluster.placement_timeout_s=1e400",
        "cluster.gpu_memory_gib=.inf",
    ],
)
def test_numbers_that_are_not_finite_are_refused(item: str) -> None:
    key = re.escape(item.split("=")[0])
    with pytest.raises(ConfigError, match=rf"^{key}: -?(nan|inf) is not a finite number$"):
        load_config(None, [item])


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("generation.top_p=5", "generation.top_p: 5.0 is above the maximum 1"),
        ("training.label_smoothing=3", "training.label_smoothing: 3.0 must be below 0.5"),
        ("training.label_smoothing=0.5", "training.label_smoothing: 0.5 must be below 0.5"),
    ],
)
def test_values_the_engine_does_not_accept_are_refused(item: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=f"^{needle}$"):
        load_config(None, [item])


def test_the_edges_of_the_ranges_are_accepted() -> None:
    cfg = load_config(None, ["generation.top_p=1", "training.label_smoothing=0.49"])
    assert cfg.generation.top_p == 1.0 and cfg.training.label_smoothing == 0.49


# ----------------------------------------------------------------------------------------------
# Combinations that can make no pair, and tensor parallelism


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["generation.strategy=direct"], "generation.strategy=direct makes one answer per prompt, and so no pair"),
        (["generation.strategy=parallel"], "generation.strategy=parallel with generation.num_samples=1 makes one"),
        (["generation.turns=0"], "generation.strategy=chain with generation.turns=0 makes one answer per prompt"),
        (
            ["selection.rule=consistency", "generation.strategy=parallel", "generation.num_samples=4"],
            "selection.rule=consistency compares chain 0's last turn with its first: it needs refinement turns",
        ),
        (
            ["selection.rule=rule", "generation.strategy=parallel", "generation.num_samples=4"],
            "selection.rule=rule compares chain 0's last turn with its first",
        ),
        (
            ["selection.rule=consistency", "selection.consistency_turns=4"],
            "selection.consistency_turns=4 is above generation.turns=3",
        ),
        (
            ["selection.rule=consistency", "generation.turns=1"],  # 2 agreeing answers of 2: turn 0 among them
            "selection.consistency_turns=2 is above generation.turns=1",
        ),
    ],
)
def test_collections_that_can_make_no_pair_are_refused(sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, sets)


def test_collections_that_make_pairs_pass() -> None:
    load_config(None, ["selection.rule=consistency", "selection.consistency_turns=3"])
    load_config(None, ["generation.strategy=parallel", "generation.num_samples=2"])
    load_config(None, ["generation.strategy=parallel_chain", "generation.num_samples=2", "generation.turns=0"])


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (
            ["generation.tensor_parallel_size=4", "generation.gpus_per_generator=0.5"],
            "generation.tensor_parallel_size=4 needs generation.gpus_per_generator=4",
        ),
        (
            ["generation.gpus_per_generator=2"],
            "generation.tensor_parallel_size=1 needs generation.gpus_per_generator=1",
        ),
        (
            ["generation.tensor_parallel_size=2"],
            "generation.tensor_parallel_size=2 needs generation.gpus_per_generator=2",
        ),
    ],
)
def test_tensor_parallelism_must_match_the_gpus(sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, sets)


def test_matching_tensor_parallelism_passes() -> None:
    load_config(None, ["generation.tensor_parallel_size=2", "generation.gpus_per_generator=2"])
    load_config(None, ["generation.gpus_per_generator=0.5"])  # a share of one GPU, one rank


# ----------------------------------------------------------------------------------------------
# Tasks


def test_unknown_task_names_are_refused_before_the_run() -> None:
    with pytest.raises(
        ConfigError, match=r"^data\.task=gsm8k is not available: GSM8K is read as a file: data\.task=file"
    ):
        load_config(None, ["data.task=gsm8k"])
    with pytest.raises(ConfigError, match=r"^data\.task: 'poetry' is not one of arith, file$"):
        load_config(None, ["data.task=poetry"])
    assert TASKS == typing.get_args(typing.get_type_hints(DataConfig)["task"]) == ("arith", "file")


def test_more_held_out_prompts_than_the_built_in_task_has_are_refused() -> None:
    distinct = ArithTask().size("eval")
    assert load_config(None, [f"data.eval_prompts={distinct}"]).data.eval_prompts == distinct
    with pytest.raises(ConfigError, match=rf"data\.eval_prompts={distinct + 1} is more than .* {distinct} distinct"):
        load_config(None, [f"data.eval_prompts={distinct + 1}"])
    prompts = ArithTask().prompts("eval", distinct)
    assert len({p.question for p in prompts}) == distinct  # up to the limit, no problem repeats


# ----------------------------------------------------------------------------------------------
# Options the rest of the config gives no effect


IGNORED = [
    (["training.eta=0.01"], "training.eta", "training.loss=evolve"),
    (["training.tau_ratio=0.5"], "training.tau_ratio", "training.loss=evolve"),
    (["training.loss=dpo", "training.alpha=2"], "training.alpha", "training.loss=dpo"),
    (["training.loss=dpo", "training.gamma=0"], "training.gamma", "training.loss=dpo"),
    (["training.loss=ipo", "training.direct_loss=ipo"], "training.direct_loss", "training.loss=ipo"),
    (["training.loss=ipo", "training.label_smoothing=0.1"], "training.label_smoothing", "training.loss=ipo"),
    (
        ["training.direct_loss=ipo", "training.label_smoothing=0.1"],
        "training.label_smoothing",
        "training.loss=evolve and training.direct_loss=ipo",
    ),
    (["training.loss=inpo", "training.reference=fixed", "training.beta=0.2"], "training.beta", "training.loss=inpo"),
    (["training.loss=sft", "training.reference=fixed"], "training.reference", "training.loss=sft"),
    (["training.sft_refine_weight=2"], "training.sft_refine_weight", "training.loss=evolve and sft.data is empty"),
    (["selection.rule=rule", "selection.min_margin=1"], "selection.min_margin", "selection.rule=rule"),
    (
        ["scoring.kind=verifier", "selection.rule=verifier", "selection.min_chosen_score=0"],
        "selection.min_chosen_score",
        "selection.rule=verifier",
    ),
    (["selection.rule=rule", "selection.tie_tolerance=0.1"], "selection.tie_tolerance", "selection.rule=rule"),
    (["selection.consistency_turns=3"], "selection.consistency_turns", "selection.rule=reward"),
    (["generation.num_samples=4"], "generation.num_samples", "generation.strategy=chain"),
    (
        ["generation.strategy=parallel", "generation.num_samples=4", "generation.turns=2"],
        "generation.turns",
        "generation.strategy=parallel",
    ),
    (
        ["generation.backend=transformers", "generation.enforce_eager=false"],
        "generation.enforce_eager",
        "generation.backend=transformers",
    ),
    (
        ["generation.backend=transformers", "generation.kv_cache_mib=128"],
        "generation.kv_cache_mib",
        "generation.backend=transformers and scoring.backend=transformers",
    ),
    (["cluster.address=auto", "cluster.num_cpus=2"], "cluster.num_cpus", "cluster.address=auto"),
    (["run.eval_num_samples=8"], "run.eval_num_samples", "run.eval_strategies is empty"),
    (["run.eval_strategies=[chain]", "run.eval_num_samples=8"], "run.eval_num_samples", "run.eval_strategies=[chain]"),
    (
        ["run.eval_strategies=[parallel]", "run.eval_budget_tokens=100", "run.eval_num_samples=8"],
        "run.eval_num_samples",
        "run.eval_budget_tokens=100",
    ),
    (["run.eval_strategies_every_round=true"], "run.eval_strategies_every_round", "run.eval_strategies is empty"),
    (
        ["run.eval_strategy=direct", "run.eval_turns=2"],
        "run.eval_turns",
        "run.eval_strategy=direct and run.eval_strategies is empty",
    ),
    (["sft.epochs=2"], "sft.epochs", "sft.data is empty"),
    (["data.format=chat"], "data.format", "data.task=arith"),
    (["data.eval_path=test.jsonl"], "data.eval_path", "data.task=arith"),
    (
        ["data.task=file", "data.path=p.jsonl", "data.eval_prompts=0", "data.eval_path=test.jsonl"],
        "data.eval_path",
        "data.eval_prompts=0",
    ),
    (
        ["generation.backend=transformers", "generation.gpus_per_generator=1"],
        "generation.gpus_per_generator",
        "generation.backend=transformers",
    ),
    (["scoring.gpus_per_scorer=1"], "scoring.gpus_per_scorer", "scoring.backend=transformers"),
    (
        ["cluster.include_dashboard=false", "cluster.dashboard_host=0.0.0.0"],
        "cluster.dashboard_host",
        "cluster.include_dashboard=false",
    ),
    (
        ["cluster.gpu_memory_gib=80"],
        "cluster.gpu_memory_gib",
        "generation.gpus_per_generator=0 and scoring.gpus_per_scorer=0 and training.use_gpu=false",
    ),
    (["data.eval_prompts=0", "run.eval_strategy=direct"], "run.eval_strategy", "data.eval_prompts=0"),
    (["data.eval_prompts=0", "run.eval_turns=1"], "run.eval_turns", "data.eval_prompts=0"),
    (["data.eval_prompts=0", "run.eval_start=false"], "run.eval_start", "data.eval_prompts=0"),
    (
        ["generation.temperature=0", "generation.top_p=0.9"],
        "generation.top_p",
        "generation.temperature=0 and run.eval_strategies is empty",
    ),
]


@pytest.mark.parametrize(("sets", "key", "why"), IGNORED)
def test_an_option_with_no_effect_is_refused_naming_it_and_why(sets: list[str], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    message = str(e.value)
    assert message.startswith(f"{key} is set but {why}, where it has no effect (it applies only when "), message
    assert message.endswith("; remove it") and "\n" not in message


@pytest.mark.parametrize(
    "sets",
    [
        ["training.loss=inpo", "training.reference=fixed", "training.eta=0.5", "training.tau_ratio=0.5"],
        ["training.loss=dpo", "training.label_smoothing=0.1", "training.beta=0.2"],
        ["training.loss=sft", "training.sft_refine_weight=2"],
        ["generation.backend=transformers", "scoring.backend=vllm", "generation.kv_cache_mib=128"],
        ["generation.strategy=parallel_chain", "generation.num_samples=2", "generation.turns=2"],
        ["selection.rule=consistency", "selection.consistency_turns=3"],
        ["run.eval_strategies=[vote]", "run.eval_num_samples=8", "run.eval_turns=2"],
        ["run.eval_strategy=direct", "run.eval_strategies=[chain]", "run.eval_turns=2"],
        ["sft.data=p.jsonl", "sft.epochs=2"],
        ["cluster.num_cpus=2"],
        ["generation.gpus_per_generator=1"],
        ["scoring.backend=vllm", "scoring.gpus_per_scorer=1"],
        ["cluster.dashboard_host=0.0.0.0"],
        ["training.use_gpu=true", "cluster.gpu_memory_gib=80"],
        ["run.eval_strategy=direct", "run.eval_start=false"],
        [
            "generation.temperature=0",
            "run.eval_strategies=[vote]",
            "run.eval_temperatures={vote: 0.7}",
            "generation.top_p=0.9",
        ],
    ],
)
def test_the_same_options_where_they_apply_pass(sets: list[str]) -> None:
    load_config(None, sets)


def test_a_default_that_does_not_apply_is_not_an_error() -> None:
    cfg = load_config(None, ["training.loss=dpo"])
    assert cfg.training.gamma == 1.0 and cfg.training.eta == 0.005  # unused defaults, nothing set
    load_config(None, ["training.loss=dpo", "training.gamma=1.0", "training.eta=0.005"])  # set to the default


def test_a_resolved_config_loads_back_as_overrides(tmp_path) -> None:
    """print-config's output holds every key: those that do not apply hold their defaults."""
    cfg = load_config(None, ["training.loss=inpo", "training.reference=fixed", "training.eta=0.5"])
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_yaml(cfg))
    assert load_config(f) == cfg
    with pytest.raises(ConfigError, match=r"^training\.eta is set but training\.loss=dpo"):
        load_config(f, ["training.loss=dpo", "training.reference=refresh"])


def test_a_stored_base_and_internal_replacements_are_not_explicit() -> None:
    """A resumed run's config.yaml (the base) was validated when it was made; replace() is the code's own."""
    cfg = load_config(None, base={"training": {"loss": "dpo", "gamma": 0.5}})
    assert cfg.training.gamma == 0.5
    assert replace(Config(), training={"loss": "dpo", "alpha": 2.0}).training.alpha == 2.0


def test_an_option_with_no_effect_is_one_line_and_exit_2() -> None:
    r = run_cli("print-config", "--set", "training.eta=0.01")
    assert_one_line_error(r, "training.eta is set but training.loss=evolve, where it has no effect")


def test_a_bad_yaml_file_is_one_line(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("training:\n  beta: 1\n   lr: 2\n")
    r = run_cli("print-config", "--config", str(f))
    line = assert_one_line_error(r, "not valid YAML: mapping values are not allowed here at line 3 column 6")
    assert r.stderr.count("\n") == 1, line


# ----------------------------------------------------------------------------------------------
# The settings that ship still validate


def test_the_demo_and_the_reproduce_arms_validate() -> None:
    assert load_config(None, list(DEMO_SETS)).scoring.kind == "verifier"
    shared = overrides_of(None, [*DEMO_SETS, *SMOKE_SETS, *seed_sets(1), "training.lr=1e-5"])
    for arm in arms().values():  # as reproduce.run_arm loads them: the shared settings as the base
        load_config(None, [*arm.sets, "run.eval_strategy=chain", "run.eval_turns=3"], base=shared)
    with pytest.raises(ConfigError, match=r"^training\.beta is set but training\.loss=inpo"):  # an arm's own
        load_config(None, [*arms()["inpo"].sets, "training.beta=0.2"], base=shared)


# ----------------------------------------------------------------------------------------------
# The metadata and docs/options.md


def _conds(expr: Cond | All | AnyOf) -> list[Cond]:
    return [expr] if isinstance(expr, Cond) else [c for p in expr.parts for c in _conds(p)]


def test_every_condition_names_an_option_and_values_it_can_hold() -> None:
    hints = {key: tp for key, _, tp in fields(Config)}
    checked = 0
    for key, f, _ in fields(Config):
        if (expr := f.metadata.get("applies")) is None:
            continue
        for cond in _conds(expr):
            value_of(Config(), cond.key)  # raises for a key the schema lacks
            tp = hints[cond.key]
            if typing.get_origin(tp) is typing.Literal:
                assert set(cond.values) <= set(typing.get_args(tp)), (key, cond)
            checked += 1
    assert checked > 30


def test_docs_options_md_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == options_markdown(), (
        "docs/options.md is out of date: rewrite it with `.venv/bin/python -m evolve_ray.options`"
    )


def test_the_table_lists_every_option_once_with_where_it_applies() -> None:
    text = options_markdown()
    keys = [key for key, _, _ in fields(Config)]
    assert all(text.count(f"| `{key}` |") == 1 for key in keys)
    assert "| `training.eta` | float | `0.005` | training.loss=inpo |  |" in text
    assert "| `generation.num_generators` | int | `1` | always | yes |" in text


def test_settings_inherited_where_they_do_not_apply_are_not_refused(tmp_path) -> None:
    """Stage 1 takes the run's settings with no strategies to compare (pipeline.stage1_config): the
    comparison's temperatures and budget stay, unused, and are not the user's doing there."""
    from evolve_ray.driver.pipeline import stage1_config

    cfg = load_config(
        None,
        [
            "sft.data=p.jsonl",
            "run.eval_strategies=[vote,chain]",
            "run.eval_temperatures={vote: 0.5}",
            "run.eval_budget_tokens=300",
        ],
    )
    stage1 = stage1_config(cfg, tmp_path / "sft")
    assert stage1.run.eval_strategies == [] and stage1.training.loss == "sft"
    with pytest.raises(ConfigError, match=r"^run\.eval_temperatures\.vote is set but vote is not in"):
        load_config(None, ["run.eval_strategies=[chain]", "run.eval_temperatures={vote: 0.5}"])
