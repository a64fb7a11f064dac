"""What the driver hands the trainer's workers each round, in a module with no heavy imports.

The coordinator actor only stores and forwards `RoundJob`s, and must not pay for what they
carry: the first GeneratorActor handle unpickled in the coordinator's process took ~3 s (5 s on
a busy machine; a plain actor's handle takes milliseconds, so most likely the generator's
module and its torch/transformers imports load), and that was the first round's hand-off.
So the handles travel inside an object-store reference, resolved only by the rank that pushes,
and the class itself lives apart from the worker module's heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RoundJob:
    """One round's work. `pairs` holds one ObjectRef to list[PreferencePair] and `generators` one
    ObjectRef to the list of GeneratorActor handles, or nothing when there is no one to push to
    (inside lists, so Ray does not resolve them on the way through the coordinator)."""

    round: int
    pairs: list[Any]
    generators: list[Any]
    checkpoint_dir: str
    transport: str
    submitted_at: float  # time.time() when the driver handed the pairs over (train/first_step_delay_s)
