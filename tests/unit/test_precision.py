"""Training precision: float32 master weights and optimizer state whatever dtype the checkpoint is
stored in, bf16 compute (training.bf16), and the inference dtype for what leaves the trainer.

Why: at lr 5e-7 an AdamW step (about lr * sign(grad) on its first step) is 5e-7 per weight; a
weight of size 0.02 has a bf16 spacing of 2^-6 * 2^-7 ~ 1.2e-4 (0.02 is in [2^-6, 2^-5)) and an
fp32 one of ~1.9e-9, so the step rounds away in bf16 and lands in fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evolve_ray.config import load_config
from evolve_ray.train.parallel import inference_state, load_reference, load_trainable
from evolve_ray.train.step import autocast
from tests.fsdp_case import SMALL_LR, save_bf16_policy, small_lr_step_changed_fraction


@pytest.fixture(scope="module")
def bf16_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bf16_policy(tmp_path_factory.mktemp("bf16") / "policy")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_small_lr_step_moves_nearly_every_weight_of_a_bf16_checkpoint(
    one_rank_gloo, bf16_policy: Path, strategy: str
) -> None:
    """DDP (autocast) and FSDP2 (MixedPrecisionPolicy) alike. Loading the trainable policy in
    bf16 (the trainer before this test) fails here: the masters are bf16 and well under 1% of
    the weights move."""
    fraction = small_lr_step_changed_fraction(str(bf16_policy), torch.device("cpu"), strategy)
    assert fraction >= 0.9, f"one step at lr {SMALL_LR} changed only {fraction:.1%} of the weights"


def test_reference_is_held_in_the_compute_dtype(bf16_policy: Path) -> None:
    """bf16 compute: a bf16 reference (half the memory, the same matmul inputs); fp32 compute:
    fp32, whatever model.dtype says. Frozen either way; the trainable policy is fp32 either way."""
    for bf16, want in ((True, torch.bfloat16), (False, torch.float32)):
        cfg = load_config(None, [f"model.policy={bf16_policy}", "model.dtype=bfloat16", f"training.bf16={bf16}"])
        ref = load_reference(str(bf16_policy), cfg)
        assert {p.dtype for p in ref.parameters()} == {want}
        assert not any(p.requires_grad for p in ref.parameters())
        assert {p.dtype for p in load_trainable(str(bf16_policy), cfg).parameters()} == {torch.float32}


def test_inference_state_casts_floats_once_and_keeps_integer_buffers() -> None:
    state = {"w": torch.tensor([1.0, 1.0 + 2**-10]), "ids": torch.tensor([3, 4])}
    out = inference_state(state, "bfloat16")
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [1.0, 1.0]  # 2^-10 < bf16's 2^-8 spacing at 1
    assert out["ids"] is state["ids"]
    assert inference_state(state, "float32")["w"] is state["w"]  # fp32 inference dtype: no copy


@pytest.mark.parametrize(
    ("bf16", "strategy", "want"),
    [(True, "ddp", torch.bfloat16), (False, "ddp", torch.float32), (True, "fsdp", torch.float32)],
)
def test_autocast_computes_in_bf16_on_the_cpu_under_ddp(bf16: bool, strategy: str, want: torch.dtype) -> None:
    """training.bf16 under DDP runs matmuls in bf16 on the CPU too (it used to be CUDA only);
    FSDP2 casts through its MixedPrecisionPolicy instead, so no autocast on top."""
    cfg = load_config(None, [f"training.bf16={bf16}", f"training.strategy={strategy}"]).training
    layer = torch.nn.Linear(4, 4)
    with autocast(cfg, torch.device("cpu")):
        assert layer(torch.ones(1, 4)).dtype == want
    assert layer.weight.dtype == torch.float32
