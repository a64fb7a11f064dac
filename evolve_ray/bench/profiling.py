"""Where a call's time goes: the functions that took the most of it, by their own time (cProfile).

The benchmarks use it to split a step they cannot time from outside (the weight push's load inside
vLLM, for one) without naming any library's internals here. No ray, no vllm.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from typing import Any


def top_functions(fn: Callable[[], Any], n: int = 5) -> dict[str, float]:
    """Run `fn` under cProfile; the `n` functions with the most own time, in seconds (named
    `file:line(function)`, or `{built-in ...}`), largest first."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = sorted(((v[2], k) for k, v in stats.items()), reverse=True)[:n]
    return {_name(k): tt for tt, k in rows}


def _name(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if file == "~":  # a built-in: cProfile names it fully in `name`
        return name
    return f"{file.rsplit('/', 1)[-1]}:{line}({name})"
