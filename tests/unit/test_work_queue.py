"""The buffer's pull-based work queue: fair-share batches, claims that survive a buffer restart,
a dead generator's prompts given back, a retiring generator's last batch."""

from __future__ import annotations

from pathlib import Path

from evolve_ray.core.buffer import BufferState, RoundJournal
from evolve_ray.core.selection import Selection
from evolve_ray.types import Prompt


def _no_pairs(prompt, scored) -> Selection:
    return Selection((), "no_candidates", 0)


def _state(root: Path, n: int = 0) -> BufferState:
    state = BufferState(0, RoundJournal(root / "journal"), _no_pairs)
    state.add_prompts([Prompt(f"p{i:02d}", f"q{i}") for i in range(n)])
    return state


def _finish(state: BufferState, prompts: list[Prompt]) -> None:
    state.add_candidates([], [p.id for p in prompts])  # the generator says they are finished


def test_batches_are_a_capped_fair_share_and_every_prompt_is_handed_out_once(tmp_path: Path) -> None:
    state = _state(tmp_path, 40)
    sizes, seen = [], []
    worker = 0
    while batch := state.take_work(worker, workers=2, max_batch=8):
        sizes.append(len(batch))
        seen += [p.id for p in batch]
        _finish(state, batch)
        worker = 1 - worker  # two generators take turns
    assert sorted(seen) == [f"p{i:02d}" for i in range(40)]  # each exactly once
    # capped at 8 while a fair share (unfinished / 2) is larger; then the share of what is left
    assert sizes == [8, 8, 8, 8, 4, 2, 1, 1]


def test_without_a_cap_the_shares_are_a_static_split(tmp_path: Path) -> None:
    state = _state(tmp_path, 33)
    a = state.take_work(0, workers=2, max_batch=256)
    b = state.take_work(1, workers=2, max_batch=256)
    assert (len(a), len(b)) == (17, 16)  # ceil(33 / 2), then what is left
    assert state.take_work(2, workers=3, max_batch=256) == []  # a third finds everything claimed


def test_a_prompt_held_by_one_generator_is_not_handed_to_another(tmp_path: Path) -> None:
    state = _state(tmp_path, 6)
    a = state.take_work(0, workers=2, max_batch=4)
    b = state.take_work(1, workers=2, max_batch=4)
    assert len(a) == 3 and len(b) == 3  # a fair share each: ceil(6 / 2)
    assert not {p.id for p in a} & {p.id for p in b}


def test_claims_survive_a_buffer_restart_and_a_dead_generator_gives_its_prompts_back(tmp_path: Path) -> None:
    state = _state(tmp_path, 4)
    held = state.take_work(0, workers=1, max_batch=2)
    _finish(state, held[:1])
    restarted = BufferState(0, RoundJournal(tmp_path / "journal"), _no_pairs)
    other = restarted.take_work(1, workers=1, max_batch=4)
    assert [p.id for p in other] == ["p02", "p03"]  # not p01, which generator 0 still holds
    _finish(restarted, other)
    assert restarted.release_work(0) == 1  # generator 0 died: its unfinished prompt goes back
    assert [p.id for p in restarted.take_work(1, workers=1, max_batch=4)] == ["p01"]


def test_a_retiring_generator_gets_no_more_work_until_it_rejoins(tmp_path: Path) -> None:
    state = _state(tmp_path, 4)
    state.take_work(0, workers=2, max_batch=1)
    state.retire(0)
    assert state.take_work(0, workers=2, max_batch=1) == []
    assert len(state.take_work(1, workers=2, max_batch=1)) == 1
    state.retire(0, retiring=False)
    assert len(state.take_work(0, workers=2, max_batch=1)) == 1


def test_releasing_every_claim_when_no_generator_works(tmp_path: Path) -> None:
    state = _state(tmp_path, 5)
    state.take_work(0, workers=1, max_batch=2)
    state.take_work(1, workers=1, max_batch=2)
    assert state.release_work() == 4
    assert len(state.take_work(2, workers=1, max_batch=10)) == 5  # all are free again
