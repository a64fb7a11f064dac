"""GenerationRunner on the real transformers engine (tiny model, no Ray): turns stream one at a
time, prompts are reported finished when their plan is done, resumes skip what exists, and
refinement prompts that cannot fit are skipped and counted."""

from __future__ import annotations

import pytest

from evolve_ray.config import load_config
from evolve_ray.engines.generation import GenerationRunner
from evolve_ray.engines.hf_engine import TransformersEngine
from evolve_ray.types import Candidate, Prompt

PROMPTS = [Prompt(id=f"p{i}", question=q) for i, q in enumerate(["12+30=", "7+8=", "55+21="])]


@pytest.fixture(scope="module")
def engine(tiny_models):
    return TransformersEngine(str(tiny_models["policy"]), dtype="float32", trust_remote_code=False)


def _runner(engine, *sets: str) -> GenerationRunner:
    cfg = load_config(None, ["generation.max_new_tokens=6", "generation.turns=2", *sets])
    return GenerationRunner(engine, engine.tokenizer, cfg)


def _collect(runner: GenerationRunner, existing: list[Candidate]):
    events: list[tuple[list[Candidate], list[str]]] = []
    stats = runner.run(PROMPTS, round_=3, version=5, existing=existing, emit=lambda c, f: events.append((c, f)))
    return events, stats


def test_chain_streams_one_turn_per_emit_and_finishes_prompts(engine) -> None:
    events, stats = _collect(_runner(engine), [])
    turns = [sorted({c.turn for c in cands}) for cands, _ in events if cands]
    assert turns == [[0], [1], [2]]  # one batched engine call per turn, each streamed at once
    assert stats["gen/turns"] == 3
    finished = [pid for _, fin in events for pid in fin]
    assert sorted(set(finished)) == ["p0", "p1", "p2"]
    assert set(events[-2][1]) == {"p0", "p1", "p2"}  # finished with their last turn
    all_cands = [c for cands, _ in events for c in cands]
    assert all(c.policy_version == 5 and c.round == 3 for c in all_cands)
    assert stats["gen/tokens"] == sum(c.num_tokens for c in all_cands)


def test_resume_generates_only_what_is_missing(engine) -> None:
    first, _ = _collect(_runner(engine), [])
    done = [c for cands, _ in first for c in cands if c.turn == 0 or c.prompt_id == "p0"]
    events, stats = _collect(_runner(engine), done)
    new = [c for cands, _ in events for c in cands]
    assert {(c.prompt_id, c.turn) for c in new} == {("p1", 1), ("p1", 2), ("p2", 1), ("p2", 2)}
    assert stats["gen/turns"] == 2


def test_refinement_prompt_that_cannot_fit_is_skipped_and_counted(engine) -> None:
    # 40 tokens of context: the question fits, the refinement template cannot.
    events, stats = _collect(_runner(engine, "model.max_model_len=40"), [])
    cands = [c for cands, _ in events for c in cands]
    assert {c.turn for c in cands} == {0}
    assert stats["gen/skipped_question_too_long"] == 3
    assert sorted(pid for _, fin in events for pid in fin) == ["p0", "p1", "p2"]


def test_model_tokenizer_reaches_the_engines(tiny_models, tmp_path, monkeypatch) -> None:
    """model.tokenizer builds the prompts (GeneratorActor); the engine must stop on its EOS and
    decode with it too, not with the checkpoint's own."""
    import shutil

    from evolve_ray.engines import factory, vllm_engine

    tok = tmp_path / "tokenizer"
    shutil.copytree(tiny_models["policy"], tok, ignore=shutil.ignore_patterns("*.safetensors"))
    sets = [f"model.policy={tiny_models['policy']}", f"model.tokenizer={tok}"]
    engine = factory.make_engine(
        load_config(None, [*sets, "generation.backend=transformers"]), str(tiny_models["policy"])
    )
    assert engine.tokenizer.name_or_path == str(tok)

    seen: dict = {}

    class Recorder:
        def __init__(self, model_path: str, **kwargs) -> None:
            seen.update(kwargs, model=model_path)

    monkeypatch.setattr(vllm_engine, "VLLMEngine", Recorder)
    factory.make_engine(load_config(None, [*sets, "generation.backend=vllm"]), "/checkpoints/r000")
    assert seen["tokenizer"] == str(tok) and seen["model"] == "/checkpoints/r000"
    factory.make_engine(load_config(None, ["generation.backend=vllm"]), "/checkpoints/r000")
    assert seen["tokenizer"] == "/checkpoints/r000"  # no model.tokenizer: the checkpoint's own
