"""Built-in task: multi-digit addition with an exact verifier.

Why addition: a tiny model gets it partly right (carries are the hard part), and a second look
at a wrong sum can fix it, so there is room for refinement to help. Prompts come from a seed;
the three splits are disjoint by construction (each (a, b) is hashed into one split).
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from dataclasses import dataclass

from evolve_ray.types import Prompt

SPLITS = ("train", "round", "eval")
_ANSWER = re.compile(r"-?\d+")
LO, HI = 10, 99  # two-digit operands


def split_of(a: int, b: int) -> str:
    h = zlib.crc32(f"{a}+{b}".encode()) % 10
    return "train" if h < 6 else ("round" if h < 8 else "eval")


@dataclass(frozen=True)
class ArithTask:
    seed: int = 0
    name: str = "arith"
    verifiable: bool = True

    def size(self, split: str) -> int:
        """How many distinct problems the split holds (4880 train, 1610 round, 1610 eval)."""
        return sum(split_of(a, b) == split for a in range(LO, HI + 1) for b in range(LO, HI + 1))

    def _pairs(self, split: str):
        """Every problem of the split once, in a seeded random order."""
        rng = random.Random(f"{self.seed}/{split}")
        seen: set[tuple[int, int]] = set()
        total = self.size(split)
        while len(seen) < total:
            a, b = rng.randint(LO, HI), rng.randint(LO, HI)
            if (a, b) not in seen and split_of(a, b) == split:
                seen.add((a, b))
                yield a, b

    def prompts(self, split: str, n: int, *, offset: int = 0) -> list[Prompt]:
        """Prompts offset .. offset+n-1 of the split's order; past its end the order starts again
        (ids keep counting, so a reused problem is a new prompt)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        problems = list(itertools.islice(self._pairs(split), offset + n))
        if not problems:
            raise ValueError(f"split {split!r} holds no problems")
        out: list[Prompt] = []
        for i in range(offset, offset + n):
            a, b = problems[i % len(problems)]
            out.append(Prompt(id=f"{split}-{i:06d}", question=f"{a}+{b}=", answer=str(a + b)))
        return out

    def extract_answer(self, text: str) -> str | None:
        found = _ANSWER.findall(text)
        return found[-1] if found else None

    def verify(self, prompt: Prompt, text: str) -> bool:
        return prompt.answer is not None and self.extract_answer(text) == prompt.answer
