"""The transformers reward scorer reads each conversation's true last token, whatever the pad id.

With a Llama-3-style reward model (pad == EOS == <|eot_id|>, the chat template ends in it), HF's
*ForSequenceClassification rule "last token that is not the pad id" skips the trailing EOS and
reads the token before it, while vLLM's pooling runner reads the EOS itself. The scorer must
read the EOS too, so that both backends (and every tokenizer) give one reward scale.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from evolve_ray.config import load_config
from evolve_ray.engines.scoring import RewardModelScorer, conversation_ids
from evolve_ray.models.loading import load_reward, load_tokenizer
from evolve_ray.types import Candidate, Prompt

QA = [
    ("12+34=", "46"),
    ("what is 9+9?", "eighteen, I think; or is it nineteen? Let me count again: 9, 10, 11, ..., 18."),
    ("3+4=", "7"),
    ("1+1=", ""),
    ("Add 120 and 5.", "125"),
]


def _batch() -> list[tuple[Candidate, Prompt]]:
    prompts = [Prompt(f"p{i}", q) for i, (q, _) in enumerate(QA)]
    return [(Candidate(p.id, 0, 0, a, None, 0, 0, "chain"), p) for p, (_, a) in zip(prompts, QA, strict=True)]


def _scores(path: str, micro_batch: int) -> list[float]:
    cfg = load_config(None, ["scoring.backend=transformers", f"scoring.micro_batch={micro_batch}"])
    return [s.value for s in RewardModelScorer(cfg, path).score(_batch())]


@torch.no_grad()
def _last_token_reference(path: str) -> tuple[list[float], list[float]]:
    """Per conversation, alone and unpadded: the score head applied to the backbone's final
    hidden state at the last position (`rm.score(rm.model(ids).last_hidden_state)[0, -1, 0]`,
    i.e. the head's per-position logit read at length-1, the token vLLM pools), and HF's own
    pooled logit `rm(ids).logits[0, 0]` (the last token that is not the pad id)."""
    rm = load_reward(path, dtype="float32").eval()
    tok = load_tokenizer(path)
    last, hf = [], []
    for q, a in QA:
        ids = torch.tensor([conversation_ids(tok, q, a)])
        assert ids[0, -1].item() == tok.eos_token_id == tok.pad_token_id  # the case under test
        last.append(rm.score(rm.model(ids).last_hidden_state)[0, -1, 0].item())
        hf.append(rm(ids).logits[0, 0].item())
    return last, hf


def test_transformers_scorer_reads_the_true_last_token_when_pad_is_eos(chat_models) -> None:
    path = str(chat_models["reward"])
    last, hf_pad_search = _last_token_reference(path)
    assert hf_pad_search != pytest.approx(last, abs=1e-3)  # the two rules read different tokens here
    assert _scores(path, micro_batch=len(QA)) == pytest.approx(last, abs=1e-4)


def test_batch_of_many_equals_one_at_a_time(chat_models) -> None:
    path = str(chat_models["reward"])
    assert _scores(path, micro_batch=len(QA)) == pytest.approx(_scores(path, micro_batch=1), abs=1e-5)


def test_reward_model_without_a_pad_id_scores_batches(chat_models, tmp_path) -> None:
    """Many reward models ship no pad_token_id; HF then refuses batches of more than one. The
    scorer never searches for the pad id, so it scores them as it scores one at a time."""
    path = tmp_path / "no-pad"
    shutil.copytree(chat_models["reward"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["pad_token_id"] = None
    (path / "config.json").write_text(json.dumps(cfg))
    last, _ = _last_token_reference(str(chat_models["reward"]))
    assert _scores(str(path), micro_batch=len(QA)) == pytest.approx(last, abs=1e-4)
