"""Build the configured task: the built-in arithmetic task, or prompts from a file or hub dataset."""

from __future__ import annotations

import typing

from evolve_ray.config import DataConfig
from evolve_ray.errors import UserError
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.tasks.base import Task
from evolve_ray.tasks.files import FileTask

TASKS: tuple[str, ...] = typing.get_args(typing.get_type_hints(DataConfig)["task"])  # the schema's names


def make_task(data: DataConfig, *, max_prompt_chars: int | None = None) -> Task:
    """The task named by `data.task`; `max_prompt_chars` skips longer file prompts as too_long."""
    if data.task == "arith":
        return ArithTask(seed=data.seed)
    if data.task == "file":
        return FileTask(
            data.path,
            format=data.format,
            prompt_column=data.prompt_column,
            answer_column=data.answer_column,
            eval_prompts=data.eval_prompts,
            seed=data.seed,
            max_prompt_chars=max_prompt_chars,
        )
    raise UserError(f"data.task: unknown task {data.task!r}; valid: {', '.join(TASKS)}")
