"""The retry budget: MAX_ATTEMPTS tries of a unit, the first included, counted per unit."""

from __future__ import annotations

import pytest

from evolve_ray.driver.retry import MAX_ATTEMPTS, Attempts


def test_the_last_try_fails_the_unit_and_units_count_apart() -> None:
    attempts = Attempts("generator")
    cause = OSError("actor died")
    for _ in range(MAX_ATTEMPTS - 1):  # failures of tries 1..N-1 each allow one more try
        attempts.failed(0, cause)
        attempts.failed(1)
    with pytest.raises(RuntimeError, match=f"generator 0 failed {MAX_ATTEMPTS} times") as e:
        attempts.failed(0, cause)
    assert e.value.__cause__ is cause
    assert attempts.failures == {0: MAX_ATTEMPTS, 1: MAX_ATTEMPTS - 1}
    with pytest.raises(RuntimeError, match=f"^round 2 evaluation failed {MAX_ATTEMPTS} times"):
        once = Attempts("round 2 evaluation")
        for _ in range(MAX_ATTEMPTS):
            once.failed("")
