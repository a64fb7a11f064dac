"""The config turned into what a component needs: the configured task (the built-in arithmetic
task, or prompts from a file or hub dataset), and the buffer's settings as plain values."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from evolve_ray.config import Config, DataConfig, SelectionConfig
from evolve_ray.core.buffer import RoundSelector, Selector
from evolve_ray.core.selection import AnswerFn, Selection, select_pairs
from evolve_ray.errors import UserError
from evolve_ray.tasks.arith import ArithTask
from evolve_ray.tasks.base import Task
from evolve_ray.tasks.files import FileTask
from evolve_ray.types import Prompt, ScoredCandidate

TASKS: tuple[str, ...] = typing.get_args(typing.get_type_hints(DataConfig)["task"])  # the schema's names


def make_task(data: DataConfig) -> Task:
    """The task named by `data.task`."""
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
            eval_path=data.eval_path,
        )
    raise UserError(f"data.task: unknown task {data.task!r}; valid: {', '.join(TASKS)}")


def make_selector(selection: SelectionConfig, *, template: str, extract_answer: AnswerFn | None) -> RoundSelector:
    """The configured selection rule, for any round (the round goes into the pairs' ids)."""

    def for_round(round_: int) -> Selector:
        def select(prompt: Prompt, scored: list[ScoredCandidate]) -> Selection:
            return select_pairs(
                selection.rule,
                prompt.question,
                scored,
                template=template,
                round=round_,
                min_margin=selection.min_margin,
                min_chosen_score=selection.min_chosen_score,
                tie_tolerance=selection.tie_tolerance,
                keep_pairs=selection.keep_pairs,
                consistency_turns=selection.consistency_turns,
                extract_answer=extract_answer,
            )

        return select

    return for_round


def buffer_args(cfg: Config, run_dir: str | Path, task: Task) -> dict[str, Any]:
    """BufferActor's keyword arguments: the buffer's part of the config and of the task."""
    return {
        "run_dir": str(run_dir),
        "selector": make_selector(
            cfg.selection,
            template=cfg.refinement.template,
            extract_answer=task.extract_answer if task.verifiable else None,
        ),
        "verify": task.verify if task.verifiable else None,
        "tolerance": cfg.run.unchanged_tolerance,
        "reward_model": cfg.scoring.kind == "reward_model",
        "log_level": cfg.run.log_level,
    }
