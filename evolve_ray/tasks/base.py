"""What a task supplies: prompts with reference answers and, when checkable, a verifier."""

from __future__ import annotations

from typing import Protocol

from evolve_ray.types import Prompt


class Task(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def verifiable(self) -> bool:
        """True when `verify` can check an answer (exact tasks, GSM8K-style files)."""
        ...

    def prompts(self, split: str, n: int, *, offset: int = 0) -> list[Prompt]:
        """`n` prompts of split 'train' | 'round' | 'eval', starting at `offset` within the split."""
        ...

    def extract_answer(self, text: str) -> str | None: ...

    def verify(self, prompt: Prompt, text: str) -> bool: ...
