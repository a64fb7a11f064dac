"""The round loop (driver): each round is a list of named stages, each resumable.

    collect   draw prompts -> generators stream turns into the buffer while scorers score them
              -> the buffer turns complete chains into pairs                      [overlapped]
    train     the long-lived Ray Train group trains on the pairs, checkpoints, pushes weights
    evaluate  held-out prompts, greedy chain, scored per turn -> the round's report row

state.json records the last completed stage, so `--resume RUN` continues where a run stopped;
the buffer's journal makes a half-finished collect stage continue without regenerating.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from evolve_ray.actors.buffer import BufferActor
from evolve_ray.actors.generator import GeneratorActor
from evolve_ray.actors.scorer import ScorerActor
from evolve_ray.config import Config, dump_yaml, load_config, to_dict
from evolve_ray.core.stats import turn_stats
from evolve_ray.errors import UserError
from evolve_ray.metrics_export import MetricsExporter
from evolve_ray.preflight import ResolvedModels, resolve_models
from evolve_ray.report import append_row, finite_row, write_report
from evolve_ray.rundir import check_writable, checkpoint_dir, read_json, round_dir, write_json, write_parquet
from evolve_ray.tasks.arith import make_task
from evolve_ray.train.job import TrainerGroup
from evolve_ray.types import Candidate, Prompt, Score, to_row

log = logging.getLogger(__name__)
STAGES = ("collect", "train", "evaluate")


@dataclass
class Session:
    """Live handles of one run; built once, used by every stage."""

    cfg: Config
    run: Path
    models: ResolvedModels
    generators: list[Any]
    scorers: list[Any]
    buffer: Any
    trainer: TrainerGroup
    exporter: MetricsExporter
    task: Any
    state: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the trainer group and the actors (names are free again for the next run)."""
        self.trainer.shutdown()
        for actor in [*self.generators, *self.scorers, self.buffer]:
            ray.kill(actor, no_restart=True)

    def done(self, round_: int, stage: str) -> bool:
        last = self.state.get("last")
        if last is None:
            return False
        return (last["round"], STAGES.index(last["stage"])) >= (round_, STAGES.index(stage))

    def mark(self, round_: int, stage: str, metrics: dict[str, Any]) -> None:
        path = round_dir(self.run, round_) / "metrics.json"
        metrics = finite_row(metrics)  # NaN (e.g. no pairs to average) is "no value", not a number
        merged = (read_json(path) if path.exists() else {}) | metrics
        write_json(path, merged)
        self.state["last"] = {"round": round_, "stage": stage}
        write_json(self.run / "state.json", self.state)
        self.exporter.publish(metrics, step=round_)


# ----------------------------------------------------------------------------------------------
# Stages


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
    pending = set(ray.get(s.buffer.pending_prompts.remote()))
    todo = [p for p in prompts if p.id in pending]
    existing = ray.get(s.buffer.candidates_of.remote([p.id for p in todo]))
    shards = [todo[i :: len(s.generators)] for i in range(len(s.generators))]
    gen_refs = [
        g.generate.remote(shard, round_, [c for c in existing if c.prompt_id in {p.id for p in shard}], s.buffer)
        for g, shard in zip(s.generators, shards, strict=True)
        if shard
    ]
    score_refs = [sc.run.remote(s.buffer) for sc in s.scorers]
    gen_stats = _wait_with_progress(gen_refs, s.buffer, f"round {round_} generate")
    ray.get(s.buffer.generation_done.remote())
    score_stats = ray.get(score_refs)
    summary = ray.get(s.buffer.finalize.remote())
    scored = ray.get(s.buffer.all_scored.remote())
    chains = _chain_scores([sc.candidate for sc in scored], {sc.candidate.id: sc.score for sc in scored})
    stats = turn_stats(chains, tolerance=s.cfg.selection.tie_tolerance)
    tokens = sum(st["gen/tokens"] for st in gen_stats)
    gen_s = max((st["gen/seconds"] for st in gen_stats), default=0.0)
    valid = [sc.score for sc in scored if sc.score is not None]
    pairs = ray.get(s.buffer.pairs.remote())
    out = dict(summary)
    for st in gen_stats:  # skip / truncation counters, summed over generators
        for k, v in st.items():
            if k.startswith(("gen/skipped_", "gen/truncated_")):
                out[k] = out.get(k, 0.0) + v
    out.update({f"refine/{k}": v for k, v in stats.items()})
    out.update(
        {
            "gen/tokens": tokens,
            "gen/tokens_per_s": tokens / gen_s if gen_s else 0.0,
            "gen/prompts": float(len(prompts)),
            "score/reward_mean": sum(valid) / len(valid) if valid else float("nan"),
            "score/busy_s": sum(st["score/busy_s"] for st in score_stats),
            "pairs/margin_mean": _mean(
                [
                    p.chosen_score - p.rejected_score
                    for p in pairs
                    if p.kind == "direct" and p.chosen_score is not None and p.rejected_score is not None
                ]
            ),
        }
    )
    for k in ("improved_frac", "degraded_frac"):
        out[f"refine/{k}"] = _mean([v for key, v in stats.items() if key.endswith(k)])
    return out


def train(s: Session, round_: int) -> dict[str, Any]:
    open_round(s, round_)  # a resumed run enters here with a fresh buffer
    pairs = ray.get(s.buffer.pairs.remote())
    if not pairs:
        log.warning("round %d produced no pairs: skipping training (the policy stays as it is)", round_)
        return {"train/skipped": 1.0, "policy/version": float(_served_version(s))}
    metrics = s.trainer.train_round(round_, pairs, s.generators)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def evaluate(s: Session, round_: int) -> dict[str, Any]:
    """Greedy chain on held-out prompts; score and (if verifiable) accuracy per turn."""
    n = s.cfg.data.eval_prompts
    if n == 0:
        return {}
    prompts = s.task.prompts("eval", n)
    by_id = {p.id: p for p in prompts}
    shards = [prompts[i :: len(s.generators)] for i in range(len(s.generators))]
    turns = s.cfg.run.eval_turns if s.cfg.run.eval_strategy == "chain" else 0
    refs = [
        g.generate_eval.remote(sh, round_, "chain", turns) for g, sh in zip(s.generators, shards, strict=True) if sh
    ]
    cands: list[Candidate] = [c for part in ray.get(refs) for c in part]
    batch = [(c, by_id[c.prompt_id]) for c in cands]
    parts = [batch[i :: len(s.scorers)] for i in range(len(s.scorers))]
    scores: list[Score] = [
        x for part in ray.get([sc.score.remote(p) for sc, p in zip(s.scorers, parts, strict=True)]) for x in part
    ]
    score_of = {x.candidate_id: x.value for x in scores}
    write_parquet(
        round_dir(s.run, round_) / "eval.parquet",
        [to_row(c) | {"question": by_id[c.prompt_id].question, "score": score_of.get(c.id)} for c in cands],
    )
    out: dict[str, Any] = {}
    for k, v in turn_stats(_chain_scores(cands, score_of), tolerance=s.cfg.selection.tie_tolerance).items():
        out[f"eval/{k}"] = v
    if hasattr(s.task, "verify"):
        correct = {c.id: float(s.task.verify(by_id[c.prompt_id], c.text)) for c in cands}
        for t in range(turns + 1):
            vals = [correct[c.id] for c in cands if c.turn == t]
            out[f"eval/turn_{t}_accuracy"] = _mean(vals)
        acc_stats = turn_stats(_chain_scores(cands, correct), tolerance=0.5)
        out.update({f"eval/acc_{k}": v for k, v in acc_stats.items() if not k.endswith("_score")})
    out["eval/direct_score"] = out.get("eval/turn_0_score", float("nan"))
    return out


# ----------------------------------------------------------------------------------------------
# The loop


def run(cfg: Config) -> Path:
    """Start a new run in cfg.run.out (refused if a run is already there: use resume_run)."""
    run_dir = Path(cfg.run.out).resolve()
    if (run_dir / "state.json").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {cfg.run.out} or pick another --out")
    check_writable(run_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    return _drive(cfg, run_dir, {"last": None})


def resume_run(run_dir: Path) -> Path:
    run_dir = run_dir.resolve()
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    state = read_json(run_dir / "state.json") if (run_dir / "state.json").exists() else {"last": None}
    log.info("resuming %s after %s", run_dir, state.get("last"))
    return _drive(cfg, run_dir, state)


def _drive(cfg: Config, run_dir: Path, state: dict[str, Any]) -> Path:
    models = resolve_models(cfg, run_dir)  # validates every path before any actor starts
    task = make_task(cfg.data.task, seed=cfg.data.seed)
    connect(cfg, run_dir)
    s = _start_session(cfg, run_dir, models, task, state)
    steps: list[tuple[str, Callable[[Session, int], dict[str, Any]]]] = [
        ("collect", collect),
        ("train", train),
        ("evaluate", evaluate),
    ]
    try:
        for r in range(cfg.run.rounds):
            t_round = time.perf_counter()
            for name, fn in steps:
                if s.done(r, name):
                    continue
                t = time.perf_counter()
                log.info("round %d: %s", r, name)
                metrics = fn(s, r)
                metrics[f"time/{name}_s"] = time.perf_counter() - t
                s.mark(r, name, metrics)
            row = read_json(round_dir(run_dir, r) / "metrics.json") | {"round": r}
            row.setdefault("time/round_s", time.perf_counter() - t_round)
            append_row(run_dir, row)
        write_report(run_dir)
        log.info("run complete: %s (report.md, report.json, plots/)", run_dir)
    finally:
        s.close()
    return run_dir


def connect(cfg: Config, run_dir: Path) -> None:
    """Join the configured cluster, or start a local one (dashboard on 127.0.0.1 by default)."""
    if ray.is_initialized():
        return
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, log_to_driver=True)
        return
    ray.init(num_cpus=c.num_cpus or None, include_dashboard=c.include_dashboard, dashboard_host=c.dashboard_host)
    ctx = ray.get_runtime_context()
    log.info("started a local Ray cluster (node %s); dashboard on %s", ctx.get_node_id()[:8], c.dashboard_host)


def _engine_env(run_dir: Path) -> dict[str, str]:
    # The engine cache goes inside the run directory unless the caller already chose one.
    return {
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(run_dir / ".cache" / "vllm")),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


def _start_session(cfg: Config, run_dir: Path, models: ResolvedModels, task: Any, state: dict) -> Session:
    trained = _trained_rounds(run_dir, state)
    policy = str(checkpoint_dir(run_dir, trained - 1)) if trained else models.policy
    g, sc = cfg.generation, cfg.scoring
    env = {"env_vars": _engine_env(run_dir)}
    gens = [
        GeneratorActor.options(
            name=f"generator-{i}", num_cpus=g.cpus_per_generator, num_gpus=g.gpus_per_generator, runtime_env=env
        ).remote(cfg, policy, i, trained)
        for i in range(g.num_generators)
    ]
    scorers = [
        ScorerActor.options(
            name=f"scorer-{i}", num_cpus=sc.cpus_per_scorer, num_gpus=sc.gpus_per_scorer, runtime_env=env
        ).remote(cfg, models.reward, i)
        for i in range(sc.num_scorers)
    ]
    buffer = BufferActor.options(name="buffer").remote(cfg, str(run_dir))
    trainer = TrainerGroup(cfg, policy, run_dir, models.tokenizer, reference_model=models.policy)
    trainer.start()  # the worker group starts while generators load
    infos = ray.get([x.info.remote() for x in gens])
    ray.get([x.info.remote() for x in scorers])
    log.info("generators ready: %s", ", ".join(f"{i['index']}:{i['backend']}@v{i['version']}" for i in infos))
    exporter = MetricsExporter(run_dir.name, cfg.run.trackers, to_dict(cfg), str(run_dir / "trackers"))
    exporter.publish({"gen/backend_vllm": float(infos[0]["backend"] == "vllm")}, step=0)
    return Session(cfg, run_dir, models, gens, scorers, buffer, trainer, exporter, task, state)


def _trained_rounds(run_dir: Path, state: dict) -> int:
    """How many rounds' training finished (= the policy version the generators must serve)."""
    last = state.get("last")
    if last is None:
        return 0
    r, stage = last["round"], last["stage"]
    return r + 1 if STAGES.index(stage) >= STAGES.index("train") else r


def _served_version(s: Session) -> int:
    return ray.get(s.generators[0].version.remote())


def _wait_with_progress(refs: list, buffer: Any, desc: str) -> list[dict[str, float]]:
    with tqdm(desc=desc, unit="cand", leave=False) as bar:
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            n = int(ray.get(buffer.summary.remote())["buffer/candidates"])
            bar.update(n - bar.n)
    return ray.get(refs)


def _chain_scores(cands: list[Candidate], score_of: dict[str, float | None]) -> dict[str, list[float | None]]:
    """Chain 0's scores by turn, per prompt (the chain that refinement statistics follow)."""
    out: dict[str, list[float | None]] = {}
    for c in sorted((c for c in cands if c.chain == 0), key=lambda c: (c.prompt_id, c.turn)):
        out.setdefault(c.prompt_id, []).append(score_of.get(c.id))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
