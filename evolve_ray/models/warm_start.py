"""The demo's warm start: a Stage-1 policy at partial skill and a learned reward model, shipped
with the package (evolve_ray/assets/warm_start) and rebuilt by
`python -m evolve_ray.experiments.warmstart.build`. Pure: no ray, no vllm, no torch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from evolve_ray.errors import UserError

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "warm_start"
PARTS = ("policy", "policy_direct_only", "reward")
# Stage-1a snapshots (the policies before stage 1b) that a rebuild of the policy parts starts from:
# an earlier build's snapshot at epoch 5 of 14. A from-scratch stage 1a on this project's machine
# ended its schedule below the validation target (docs/results.md), so the snapshot is kept.
STAGE_1A = SHIPPED / "stage_1a"


def is_complete(root: Path) -> bool:
    return all((root / part / "model.safetensors").is_file() for part in PARTS) and (root / "manifest.json").is_file()


def warm_start_dir(*, template: str) -> Path:
    """The shipped warm start (a missing one is a broken install: one line says how to rebuild it).

    Logs a warning when `template` is not the refinement template the policy was taught with:
    the policy still runs, but its refinement turns see a prompt it never trained on.
    """
    if not is_complete(SHIPPED):
        raise UserError(
            f"the built-in warm start is missing from {SHIPPED}: reinstall the package or rebuild it "
            "with `python -m evolve_ray.experiments.warmstart.build` (a few minutes on CPU)"
        )
    taught = json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))["spec"]["template"]
    if template != taught:
        log.warning("refinement.template differs from the one the built-in warm start was trained on: %r", taught)
    return SHIPPED
