"""The demo's warm start: a Stage-1 policy at partial skill and a learned reward model, shipped
with the package (evolve_ray/assets/warm_start) and rebuilt by `python -m evolve_ray.warmstart.build`.

Pure: no ray, no vllm; torch only when a missing warm start has to be built.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "warm_start"
PARTS = ("policy", "policy_direct_only", "reward")
# Stage-1a snapshots (the policies before stage 1b) that a rebuild of the policy parts starts from:
# an earlier build's snapshot at epoch 5 of 14. A from-scratch stage 1a on this project's machine
# ended its schedule below the validation target (README, known gaps), so the snapshot is kept.
STAGE_1A = SHIPPED / "stage_1a"


def is_complete(root: Path) -> bool:
    return all((root / part / "model.safetensors").is_file() for part in PARTS) and (root / "manifest.json").is_file()


def warm_start_dir(fallback: Path, *, template: str) -> Path:
    """The shipped warm start, or one built into `fallback` (minutes on CPU) when it is missing.

    Logs a warning when `template` is not the refinement template the policy was taught with:
    the policy still runs, but its refinement turns see a prompt it never trained on.
    """
    root = SHIPPED if is_complete(SHIPPED) else fallback
    if not is_complete(root):
        from evolve_ray.warmstart.build import build_warm_start

        log.warning("no shipped warm start at %s: building one in %s (a few minutes on CPU)", SHIPPED, root)
        build_warm_start(root, stage_1a=STAGE_1A if (STAGE_1A / "policy").is_dir() else None)
    taught = json.loads((root / "manifest.json").read_text(encoding="utf-8"))["spec"]["template"]
    if template != taught:
        log.warning("refinement.template differs from the one the built-in warm start was trained on: %r", taught)
    return root
