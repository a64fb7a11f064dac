"""The config schema: defaults, YAML and --set overrides, and one clear error per bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evolve_ray.config import Config, ConfigError, dump_yaml, load_config, parse_set


def test_defaults_are_the_dataclass_fields() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.training.loss == "evolve" and cfg.generation.turns == 3


def test_yaml_then_set_overrides_in_order(tmp_path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("training:\n  beta: 0.2\n  loss: dpo\ngeneration:\n  turns: 2\n")
    cfg = load_config(f, ["training.beta=0.05", "generation.temperature=0"])
    assert cfg.training.beta == 0.05  # --set wins over the file
    assert cfg.training.loss == "dpo" and cfg.generation.turns == 2
    assert cfg.generation.temperature == 0.0 and isinstance(cfg.generation.temperature, float)


def test_resolved_config_round_trips_through_yaml(tmp_path) -> None:
    cfg = load_config(None, ["training.alpha=0.5", "run.trackers=[tensorboard]"])
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_yaml(cfg))
    assert load_config(f) == cfg


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["nope.x=1"], "nope"),
        (["training.nope=1"], "training.nope"),
        (["training.beta=abc"], "training.beta"),
        (["training.beta=0"], "training.beta"),
        (["generation.num_generators=0"], "generation.num_generators"),
        (["generation.max_new_tokens=-3"], "generation.max_new_tokens"),
        (["training.loss=ppo"], "training.loss"),
        (["training.use_gpu=maybe"], "training.use_gpu"),
        (["training=3"], "training"),
        (["refinement.template=no slots"], "refinement.template"),
        (["training.gamma=0.5", "selection.keep_pairs=false"], "keep_pairs"),
        (["selection.rule=verifier"], "scoring.kind=verifier"),
        (["training.loss=inpo"], "training.reference=fixed"),
        (["run.trackers=[comet]"], "run.trackers"),
        (["justakey"], "key=value"),
    ],
)
def test_bad_values_name_the_key(sets, needle) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, sets)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["training.betta=0.1"])
    assert "beta" in str(e.value) and "valid keys" in str(e.value)


def test_bad_yaml_file_is_a_config_error(tmp_path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_parse_set_types() -> None:
    assert parse_set("a.b=3") == {"a": {"b": 3}}
    assert parse_set("a.b=true") == {"a": {"b": True}}
    assert parse_set("a=hello world") == {"a": "hello world"}


def test_cli_print_config_rejects_unknown_section() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "print-config", "--set", "nope.x=1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "nope" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1  # one line


def test_cli_print_config_prints_resolved_yaml() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "print-config", "--set", "training.beta=0.25"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "beta: 0.25" in r.stdout


@pytest.mark.parametrize(("raw", "expected"), [("5e-5", 5e-5), ("1e-3", 1e-3), (".5", 0.5), ("3E+2", 300.0)])
def test_floats_as_people_type_them(tmp_path, raw: str, expected: float) -> None:
    cfg = load_config(None, [f"training.lr={raw}", f"selection.min_chosen_score=-{raw}"])
    assert cfg.training.lr == expected and isinstance(cfg.training.lr, float)
    assert cfg.selection.min_chosen_score == -expected  # an optional float field, negative
    f = tmp_path / "x.yaml"
    f.write_text(f"training:\n  lr: {raw}\nselection:\n  min_margin: {raw}\n")
    assert load_config(f).training.lr == expected and load_config(f).selection.min_margin == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "5e", "1e-3x", "e5"])
def test_non_decimal_strings_stay_errors(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"training\.lr: expected a number"):
        load_config(None, [f"training.lr={raw}"])


@pytest.mark.parametrize(
    ("item", "needle"),
    [("sync.transport=nccl", "object_store and disk"), ("generation.strategy=vote", "evaluation strategy")],
)
def test_accepted_but_unbuilt_values_are_one_line_exit_2(item: str, needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "evolve_ray.cli", "print-config", "--set", item], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.startswith("evolve-ray: error: ") and needle in r.stderr
    assert r.stderr.count("\n") == 1
