"""The collect stage (driver side): generators pull the round's prompts from the buffer in
batches and stream turns into it while scorers score them; the buffer turns complete chains into
pairs. `rescale` applies `evolve-ray scale` (control.py) while it runs and between stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray
from tqdm import tqdm

from evolve_ray.driver.fleet import ROLES, Launch, add_up
from evolve_ray.types import Prompt

if TYPE_CHECKING:
    from evolve_ray.driver.session import Session


def draw_prompts(s: Session, round_: int) -> list[Prompt]:
    d = s.cfg.data
    offset = round_ * d.prompts_per_round if d.fresh_per_round else 0
    return s.task.prompts("round", d.prompts_per_round, offset=offset)


def open_round(s: Session, round_: int) -> list[Prompt]:
    """The round's prompts, with the buffer holding that round (replayed from its journal)."""
    prompts = draw_prompts(s, round_)
    ray.get(s.buffer.open_round.remote(round_, prompts))
    return prompts


def collect(s: Session, round_: int) -> dict[str, Any]:
    """Generate the round's chains while scorers score them as they arrive; pairs come out."""
    prompts = open_round(s, round_)
    restarts_before = dict(s.fleet.restarts)
    max_batch = s.cfg.generation.max_work_batch
    running: dict[str, Launch] = {}

    def generate(g: Any, i: int) -> ray.ObjectRef:
        ray.get(s.buffer.release_work.remote(i))  # a resubmitted slot: what its dead actor held goes back
        return g.work.remote(round_, s.buffer, i, max_batch)

    def score(sc: Any, i: int) -> ray.ObjectRef:
        ray.get(s.buffer.requeue_inflight.remote())  # work a dead scorer held goes back in the queue
        return sc.run.remote(s.buffer)

    rescale(s, running)
    running["scorer"] = s.fleet.launch("scorer", score, s.fleet.staying("scorer"))
    gen_stats: dict[int, dict[str, float]] = {}
    with tqdm(desc=f"round {round_} generate", unit="cand", leave=False) as bar:

        def tick() -> None:
            rescale(s, running)
            s.trainer.check_started()  # a trainer group the cluster cannot place ends the run within its bound
            bar.update(int(ray.get(s.buffer.summary.remote())["buffer/candidates"]) - bar.n)

        # Normally one pass; another if prompts are left over (held by a leaving generator that died).
        while ray.get(s.buffer.pending_prompts.remote()):
            ray.get(s.buffer.release_work.remote())  # no generator is working now
            running["generator"] = s.fleet.launch("generator", generate, s.fleet.staying("generator"))
            for i, st in s.fleet.finish(running["generator"], tick).items():
                gen_stats[i] = add_up(gen_stats.get(i), st)
            del running["generator"]

    def scoring_tick() -> None:
        rescale(s, running)
        s.trainer.check_started()
        ray.get(s.buffer.generation_done.remote())  # re-sent on every tick: a restarted buffer starts without it

    score_stats = list(s.fleet.finish(running["scorer"], scoring_tick).values())
    del running["scorer"]
    out = collect_metrics(s, list(gen_stats.values()), score_stats)
    out["gen/prompts"] = float(len(prompts))
    return out | restarts_since(s, restarts_before)


def rescale(s: Session, running: dict[str, Launch]) -> None:
    """Bring the fleet to the counts `evolve-ray scale` asked for. An added actor starts on the
    latest policy and joins (a running launch included) once it is placed and answers; a
    generator scaled down finishes its batch and leaves (a scorer, at the end of the stage);
    between stages one leaves at once. An added slot the cluster does not place within
    cluster.placement_timeout_s is given up, and the control actor then aims for what the run has."""
    targets = ray.get(s.control.targets.remote())
    for role in ROLES:
        for i in s.fleet.joined(role):
            if role == "generator":
                ray.get(s.buffer.retire.remote(i, False))  # a slot that left earlier this round takes work again
            if role in running:
                s.fleet.submit(running[role], i)
        if s.fleet.unplaced(role):
            targets[role] = len(s.fleet.wanted(role))
            ray.get(s.control.settle.remote(role, targets[role]))
        wanted = s.fleet.wanted(role)
        for _ in range(targets[role] - len(wanted)):
            s.fleet.add(role)
        for i in wanted[targets[role] :]:
            s.fleet.leave(role, i)
            if role not in running and i in s.fleet.actors[role]:
                s.fleet.remove(role, i)
    for i in s.fleet.leaving["generator"]:  # re-sent every tick: a restarted buffer forgets
        ray.get(s.buffer.retire.remote(i))
    ray.get(s.buffer.set_workers.remote(len(s.fleet.staying("generator"))))
    lines = s.fleet.scaling_lines()
    if s.status is not None and lines != s.status.doc["scaling"]:
        s.status.update(scaling=lines)


def restarts_since(s: Session, before: dict[str, int]) -> dict[str, float]:
    """The stage's actor replacements; `Session.mark` adds them up over the round's stages."""
    return {f"fault/{role}_restarts": float(s.fleet.restarts[role] - before.get(role, 0)) for role in ROLES}


def collect_metrics(s: Session, gen_stats: list[dict], score_stats: list[dict]) -> dict[str, Any]:
    """The collect stage's report keys: the buffer's own round metrics, plus throughput."""
    out = ray.get(s.buffer.finalize.remote())
    tokens = sum(st.get("gen/tokens", 0.0) for st in gen_stats)
    gen_s = max((st.get("gen/seconds", 0.0) for st in gen_stats), default=0.0)
    for st in gen_stats:  # skip / truncation counters, summed over generators
        for k, v in st.items():
            if k.startswith(("gen/skipped_", "gen/truncated_")):
                out[k] = out.get(k, 0.0) + v
    return out | {
        "gen/tokens": tokens,
        "gen/tokens_per_s": tokens / gen_s if gen_s else 0.0,
        "gen/batches": sum(st.get("gen/batches", 0.0) for st in gen_stats),
        "score/busy_s": sum(st["score/busy_s"] for st in score_stats),
    }
