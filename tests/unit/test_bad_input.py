"""Bad input is refused with one clear line before any actor starts: config values the schema
cannot hold, more GPUs than the cluster has, model paths that are not models, a tokenizer without
a chat template, a prompt file without one valid row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evolve_ray.config import ConfigError, load_config
from evolve_ray.driver.preflight import check_gpus
from evolve_ray.errors import UserError
from evolve_ray.models.loading import load_tokenizer

from .cli_helpers import assert_one_line_error, run_cli

# ----------------------------------------------------------------------------------------------
# Config: sizes, signs and types test_config.py does not already cover


@pytest.mark.parametrize(
    "item",
    [
        "data.prompts_per_round=0",
        "data.eval_prompts=-1",
        "generation.turns=-1",
        "generation.num_samples=0",
        "generation.top_p=0",
        "generation.temperature=-0.5",
        "generation.kv_cache_mib=0",
        "generation.cpus_per_generator=-1",
        "generation.gpus_per_generator=-0.5",
        "generation.tensor_parallel_size=0",
        "scoring.num_scorers=0",
        "scoring.micro_batch=0",
        "training.batch_size=0",
        "training.grad_accum=0",
        "training.epochs=0",
        "training.num_workers=0",
        "training.lr=0",
        "training.lr=-1e-5",
        "training.max_len=4",
        "model.max_model_len=8",
        "run.rounds=-1",
        "cluster.num_cpus=-2",
        "generation.turns=1.5",  # a float where an integer is needed
        "generation.turns=three",
        "data.seed=[1]",
        "model.trust_remote_code=1",  # an integer is not a yes/no
        "training.beta=true",  # a yes/no is not a number
        "run.trackers=wandb",  # a string where a list is needed
        "generation.strategy=beam",
    ],
)
def test_bad_sizes_and_types_name_the_key(item: str) -> None:
    key = item.split("=", 1)[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_unknown_key_in_a_yaml_section_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("generation:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"generation\.temprature.*valid keys: .*temperature"):
        load_config(f)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


# ----------------------------------------------------------------------------------------------
# GPUs: the sum of what the config asks for against what the cluster has


def test_more_gpus_than_the_cluster_has_names_each_ask() -> None:
    cfg = load_config(
        None,
        [
            "generation.num_generators=2",
            "generation.gpus_per_generator=1",
            "scoring.backend=vllm",
            "scoring.gpus_per_scorer=1",
        ],
    )
    with pytest.raises(ConfigError) as e:
        check_gpus(cfg, 2.0)
    msg = str(e.value)
    assert "asks for 3 GPUs" in msg and "cluster has 2" in msg
    assert "generation.num_generators x gpus_per_generator = 2" in msg and "scoring" in msg
    check_gpus(cfg, 3.0)  # an exact fit runs


def test_training_gpus_count_one_per_worker_and_only_when_training() -> None:
    cfg = load_config(None, ["training.use_gpu=true", "training.num_workers=3", "generation.gpus_per_generator=1"])
    with pytest.raises(ConfigError, match=r"asks for 4 GPUs .*training\.num_workers"):
        check_gpus(cfg, 3.0)
    check_gpus(cfg, 1.0, training=False)  # `evolve-ray eval` starts no trainer
    check_gpus(load_config(), 0.0)  # the CPU default asks for none


def test_gpu_generators_without_vllm_are_refused_not_run_on_cpu(monkeypatch) -> None:
    """generation.backend=auto falls back to the transformers engine, which runs on CPU, when vLLM
    does not import. vLLM is installed here, so the test hides it from importlib."""
    import importlib.util

    cfg = load_config(None, ["generation.gpus_per_generator=1"])
    check_gpus(cfg, 1.0)  # vLLM found: the GPU serves it
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^generation\.gpus_per_generator=1 with generation\.backend=auto, and vLLM"):
        check_gpus(cfg, 1.0)
    check_gpus(load_config(), 0.0)  # no GPU asked: the CPU fallback is what auto means


# ----------------------------------------------------------------------------------------------
# `evolve-ray run` with a bad path or file: one line, exit 2, no cluster started


def _run(out: Path, tiny_models, *sets: str):
    base = [f"model.policy={tiny_models['policy']}", f"model.reward={tiny_models['reward']}"]
    args = ["run", "--out", str(out)]
    for s in [*base, *sets]:
        args += ["--set", s]
    return run_cli(*args)


def test_cli_model_path_that_does_not_exist(tmp_path: Path, tiny_models) -> None:
    r = _run(tmp_path / "run", tiny_models, f"model.policy={tmp_path / 'no-such-model'}")
    assert_one_line_error(r, "model.policy: path does not exist")


def test_cli_model_path_that_is_not_a_model(tmp_path: Path, tiny_models) -> None:
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello\n")
    r = _run(tmp_path / "run", tiny_models, f"model.reward={not_a_model}")
    assert_one_line_error(r, "model.reward")
    assert "not a model directory" in r.stderr


def test_cli_reward_model_with_two_labels(tmp_path: Path, tiny_models) -> None:
    """A classifier with two labels is no reward model: refused before the vLLM scorer would read its first logit."""
    two = tmp_path / "two-labels"
    shutil.copytree(tiny_models["reward"], two)
    config = json.loads((two / "config.json").read_text())
    config |= {"id2label": {"0": "bad", "1": "good"}, "label2id": {"bad": 0, "good": 1}}
    (two / "config.json").write_text(json.dumps(config))
    r = _run(tmp_path / "run", tiny_models, f"model.reward={two}")
    assert_one_line_error(r, f"model.reward: {two} has 2 labels; a reward model has 1")


def test_cli_tokenizer_without_chat_template(tmp_path: Path, tiny_models) -> None:
    tok = load_tokenizer(str(tiny_models["policy"]))
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain-tok")
    (tmp_path / "plain-tok" / "chat_template.jinja").unlink(missing_ok=True)
    r = _run(tmp_path / "run", tiny_models, f"model.tokenizer={tmp_path / 'plain-tok'}")
    assert_one_line_error(r, "no chat template")


def test_a_file_task_without_a_reward_model_is_refused_not_scored_by_the_built_in_one(
    tmp_path: Path, tiny_models
) -> None:
    """The built-in reward model knows only the arithmetic task: it never scores a user's prompts."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    args = ["run", "--out", str(tmp_path / "run"), "--set", f"model.policy={tiny_models['policy']}"]
    r = run_cli(*args, "--set", "data.task=file", "--set", f"data.path={prompts}")
    assert_one_line_error(r, "model.reward is empty and data.task=file: the built-in reward model knows only")


def test_cli_prompt_file_without_a_valid_row(tmp_path: Path, tiny_models) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": ""}), "{not json", json.dumps({"prompt": 3})]) + "\n")
    r = _run(tmp_path / "run", tiny_models, "data.task=file", f"data.path={bad}")
    assert_one_line_error(r, "no valid prompt rows")


def test_cli_vote_on_a_task_without_answers_is_refused_before_the_run(tmp_path: Path, tiny_models) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say hello {i}"}) + "\n" for i in range(8)))
    r = _run(
        tmp_path / "run", tiny_models, "data.task=file", f"data.path={prompts}", "run.eval_strategies=[chain,vote]"
    )
    assert_one_line_error(r, "strategy vote needs a task with checkable answers")


def test_cli_checkpoint_without_safetensors(tmp_path: Path, tiny_models) -> None:
    """A pickle checkpoint (pytorch_model.bin) is refused: loading one can run arbitrary code."""
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_models["policy"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    r = _run(tmp_path / "run", tiny_models, f"model.policy={pickled}")
    line = assert_one_line_error(r, "has no *.safetensors weights (pytorch_model.bin)")
    assert "model.policy" in line


def test_cli_data_path_under_a_built_in_task_is_refused(tmp_path: Path) -> None:
    """Without data.task=file the built-in task would run and the file be ignored (exit 0)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    r = run_cli("run", "--out", str(tmp_path / "run"), "--set", f"data.path={prompts}")
    line = assert_one_line_error(r, "data.path is set but data.task=arith, where it has no effect")
    assert "it applies only when data.task=file" in line


@pytest.mark.parametrize("item", ["data.format=chat", "data.prompt_column=q", "data.answer_column=a"])
def test_file_only_settings_under_a_built_in_task_are_refused(item: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{item.split('.')[1].split('=')[0]} is set but data.task=arith"):
        load_config(None, [item])
    load_config(None, [item, "data.task=file", "data.path=x.jsonl"])  # the same setting with a file: fine


def test_a_model_export_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """`export --format adapter|merged` replaces its --out folder: a non-empty one without an
    earlier export's mark (a run directory, a base model) is refused in one line and kept."""
    from evolve_ray.reporting.export import EXPORT_MARK

    mine = tmp_path / "models"
    (mine / "llama").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me\n")
    r = run_cli("export", "--run", str(tmp_path / "no-run"), "--format", "merged", "--out", str(mine))
    assert_one_line_error(r, f"--out {mine} is a directory that is not empty and holds no earlier export")
    assert (mine / "notes.txt").read_text() == "keep me\n" and (mine / "llama").is_dir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / EXPORT_MARK).write_text("{}\n")
    r = run_cli("export", "--run", str(tmp_path / "no-run"), "--format", "adapter", "--out", str(earlier))
    assert_one_line_error(r, "run directory not found")  # past the check: an earlier export may be replaced


def test_a_local_cluster_too_slow_to_start_is_one_line(monkeypatch) -> None:
    """Ray gives a new node 30 s to register and then raises a bare Exception. That cannot be made
    to happen on demand, so ray.init is replaced here by one raising Ray's own message."""
    import ray

    from evolve_ray.driver.loop import connect

    def slow(**_: object) -> None:
        raise Exception(  # noqa: TRY002  # what ray._private.node raises
            "The current node timed out during startup. This could happen because some of the raylet failed "
            "to startup or the GCS has become overloaded."
        )

    monkeypatch.setattr(ray, "init", slow)
    with pytest.raises(
        UserError,
        match=r"^the local Ray cluster did not start: its node did not register within Ray's 30 s \(load average [0-9.]+, ",
    ):
        connect(load_config())
    monkeypatch.setattr(ray, "init", lambda **_: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else is not hidden
        connect(load_config())
