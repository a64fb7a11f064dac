"""The one retry budget of the Ray shell: how many times one unit of work may fail. Pure module.

A unit is a shard of a stage, an actor slot being replaced, or a whole evaluation. Only actor
death (or a generator left on old weights) is counted and retried; any other error propagates
at once, so a deterministic failure ends the stage instead of looping.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Tries of one unit, the first one included.
MAX_ATTEMPTS = 4


class Attempts:
    """Failed tries per unit of work; the MAX_ATTEMPTS-th failure of a unit raises."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures: Counter[Any] = Counter()

    def failed(self, unit: Any, error: BaseException | None = None) -> None:
        """Count one failure of `unit`; raises RuntimeError (from `error`) at the MAX_ATTEMPTS-th."""
        self.failures[unit] += 1
        if self.failures[unit] >= MAX_ATTEMPTS:
            name = " ".join(str(x) for x in (self.what, unit) if x != "")
            raise RuntimeError(f"{name} failed {MAX_ATTEMPTS} times; giving up") from error
