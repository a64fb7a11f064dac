"""A user error raised inside a Ray Train worker reaches the console as one line, not a traceback."""

from __future__ import annotations

from ray.train.v2.api.exceptions import WorkerGroupError

from evolve_ray.cli import _user_message
from evolve_ray.errors import UserError
from evolve_ray.train.job import TrainerError


def test_a_user_error_in_a_train_worker_is_one_line() -> None:
    failures: dict[int, Exception] = {1: RuntimeError("rank 1 saw rank 0 go"), 0: UserError("LoRA adapter X: rank 8")}
    try:
        try:
            raise WorkerGroupError("two ranks failed", failures)
        except WorkerGroupError as e:
            raise TrainerError("trainer failed during round 0") from e
    except TrainerError as e:
        assert _user_message(e) == "LoRA adapter X: rank 8"
    assert _user_message(WorkerGroupError("a bug", {0: RuntimeError("boom")})) is None  # a bug keeps its traceback
