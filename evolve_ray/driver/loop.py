"""The round loop (driver): each round is a list of named stages, each resumable.

    collect   draw prompts -> generators pull them in batches and stream turns into the buffer
              while scorers score them -> the buffer turns complete chains into pairs  [overlapped]
    train     the long-lived Ray Train group trains on the pairs, checkpoints, pushes weights
    evaluate  held-out prompts, greedy chain, scored per turn -> the round's report row; at the end
              (or every round) the run.eval_strategies comparison

state.json records the last completed stage, so `--resume RUN` continues where a run stopped;
the buffer's journal makes a half-finished collect stage continue without regenerating.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ray

import evolve_ray
from evolve_ray.config import Config, dump_yaml, picks_with_reward_model, replace, to_dict
from evolve_ray.core.strategies import BEST_OF_N
from evolve_ray.driver.builders import make_task
from evolve_ray.driver.collect import collect, open_round, rescale, restarts_since
from evolve_ray.driver.console import route_actor_output, run_log, set_level
from evolve_ray.driver.control import Capacity, local_cpus, start_control
from evolve_ray.driver.evaluation import check_strategies, evaluate_prompts, evaluate_strategies
from evolve_ray.driver.fleet import Fleet
from evolve_ray.driver.interrupt import keep_sigterm
from evolve_ray.driver.memory_plan import format_plan
from evolve_ray.driver.preflight import ResolvedModels, check_adapter_start, check_fits, check_gpus, resolve_models
from evolve_ray.driver.resume_settings import changes_text, plan_resume, record_resume
from evolve_ray.driver.session import STAGES, Session, Step
from evolve_ray.driver.timeline import Timeline
from evolve_ray.errors import UserError
from evolve_ray.reporting.metrics_export import MetricsExporter
from evolve_ray.reporting.report import append_row, finite_row, load_rows, write_report
from evolve_ray.reporting.status import StatusWriter
from evolve_ray.reporting.strategy_study import StrategyRun, default_temperature, grid_of
from evolve_ray.reporting.summary import stage_line
from evolve_ray.rundir import START, atomic_write, check_writable, checkpoint_dir, read_json, round_dir, write_json
from evolve_ray.train.job import TrainerGroup
from evolve_ray.types import PreferencePair

log = logging.getLogger(__name__)
_drives = 0  # runs driven by this process: only the first one's start-up includes the imports
_started_local = False  # this process started the local cluster it is connected to


# ----------------------------------------------------------------------------------------------
# Stages


def train(s: Session, round_: int) -> dict[str, Any]:
    open_round(s, round_)  # a resumed run enters here with a fresh buffer
    return train_on(s, round_, ray.get(s.buffer.pairs.remote()))


def train_on(s: Session, round_: int, pairs: list[PreferencePair]) -> dict[str, Any]:
    """Train the round on `pairs`, checkpoint, push; the fleet then serves the new version."""
    if not pairs:
        log.warning("round %d produced no pairs: skipping training (the policy stays as it is)", round_)
        return {"train/skipped": 1.0, "policy/version": float(_served_version(s))}
    metrics = s.trainer.train_round(round_, pairs, s.generators)
    s.fleet.served(version=round_ + 1, policy=str(checkpoint_dir(s.run, round_)))
    before = dict(s.fleet.restarts)
    s.fleet.heal()  # a generator lost since collect (sync/generators_lost) comes back on the new weights
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))} | restarts_since(s, before)


def evaluate(s: Session, round_: int) -> dict[str, Any]:
    """Greedy chain on held-out prompts; score and (if verifiable) accuracy per turn. An actor
    that dies meanwhile is replaced and the stage starts again (it writes only eval.parquet)."""
    if s.cfg.data.eval_prompts == 0:
        return {}
    before = dict(s.fleet.restarts)
    return s.fleet.retry_dead(lambda: _evaluate(s, round_), f"round {round_} evaluation") | restarts_since(s, before)


def evaluate_start(s: Session) -> None:
    """The starting policy on the held-out prompts, before round 0: report.json's row -1
    ("start"), so every run shows its gain from where it began. Skipped with run.eval_start=false."""
    if not s.cfg.run.eval_start or s.cfg.data.eval_prompts == 0 or any(r["round"] == START for r in load_rows(s.run)):
        return
    t = time.perf_counter()
    row = evaluate(s, START) | {"round": START, "time/evaluate_s": time.perf_counter() - t}
    append_row(s.run, row)
    s.timeline.mark("start_evaluated")
    log.info(stage_line(START, "evaluate", row))


def _evaluate(s: Session, round_: int) -> dict[str, Any]:
    chain = s.cfg.run.eval_strategy == "chain"
    prompts = s.task.prompts("eval", s.cfg.data.eval_prompts)
    out = evaluate_prompts(
        s.generators,
        s.scorers,
        task=s.task,
        prompts=prompts,
        round_=round_,
        run=StrategyRun("chain", 1, s.cfg.run.eval_turns, 0.0) if chain else StrategyRun("direct", 1, 0, 0.0),
        reward_scores=s.cfg.scoring.kind == "reward_model",
        tolerance=s.cfg.run.unchanged_tolerance,
        out_file=round_dir(s.run, round_) / "eval.parquet",
    )
    if s.cfg.run.eval_strategies_every_round or round_ == s.cfg.run.rounds - 1:
        out |= evaluate_strategies(
            s.generators,
            s.scorers,
            task=s.task,
            prompts=prompts,
            cfg=s.cfg,
            round_=round_,
            out_dir=round_dir(s.run, round_),
        )
    return out


# ----------------------------------------------------------------------------------------------
# The loop


def run(cfg: Config, *, policy: str | None = None) -> Path:
    """Start a new run in cfg.run.out (refused if a run is already there: use resume_run).
    `policy`: the starting policy instead of model.policy (Stage 2 after a Stage 1)."""
    run_dir = Path(cfg.run.out).resolve()
    if (run_dir / "state.json").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {cfg.run.out} or pick another --out")
    check_writable(run_dir)
    atomic_write(run_dir / "config.yaml", dump_yaml(cfg).encode())
    return drive(cfg, run_dir, {"last": None}, policy=policy)


def resume_run(
    run_dir: Path, *, config: str | Path | None = None, sets: Sequence[str] = (), policy: str | None = None
) -> Path:
    """Continue the run in `run_dir` from its last completed stage, with the settings a resume may
    change (resume_settings) taken from `config` and `sets`; any other change is refused before
    any actor starts. The new settings go to RUN/config.yaml, the changes to RUN/resumes.jsonl."""
    plan = plan_resume(run_dir, config, sets)
    notes = [f"resuming {plan.run_dir} after {plan.state.get('last')}"]
    if record_resume(plan):
        notes.append(f"settings changed on resume: {changes_text(plan.changes)}")
    return drive(plan.cfg, plan.run_dir, plan.state, notes, policy=policy)


def drive(
    cfg: Config,
    run_dir: Path,
    state: dict[str, Any],
    notes: Sequence[str] = (),
    *,
    task: Any = None,
    steps: Sequence[Step] | None = None,
    policy: str | None = None,
) -> Path:
    """Run (or continue from `state`) the rounds of `cfg` in `run_dir`.

    Args:
        task: the prompts' source (default: make_task(cfg.data)).
        steps: the round's named stages (default: collect, train, evaluate).
        policy: the starting policy instead of model.policy (Stage 2 after a Stage 1).
    """
    status = StatusWriter(run_dir, rounds=cfg.run.rounds)
    global _drives
    _drives += 1
    set_level(cfg.run.log_level)  # the console's level: it was set up before the config was read
    timeline = Timeline(run_dir, process_start=evolve_ray.IMPORTED_AT if _drives == 1 else None)
    timeline.mark("driver")
    try:
        with run_log(run_dir):
            for line in notes:
                log.info(line)
            _drive_logged(cfg, run_dir, state, status, timeline, task, steps, policy)
    except BaseException as e:
        status.close("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", f"{type(e).__name__}: {e}")
        raise
    status.close("finished")
    return run_dir


def _drive_logged(
    cfg: Config,
    run_dir: Path,
    state: dict[str, Any],
    status: StatusWriter,
    timeline: Timeline,
    task: Any,
    steps: Sequence[Step] | None,
    policy: str | None,
) -> None:
    # Every path is checked before any actor starts; Stage 2 after a Stage 1 starts from (and, with
    # reference=fixed, against) Stage 1's checkpoint instead of model.policy.
    picks = picks_with_reward_model(cfg, cfg.run.eval_strategies)  # best-of-N under the verifier: an RM picks
    models = resolve_models(replace(cfg, model={"policy": policy}) if policy else cfg, picks=picks)
    if policy:
        log.info("the rounds start from %s", models.policy)
    check_adapter_start(cfg, models.policy)
    task = make_task(cfg.data) if task is None else task
    if cfg.scoring.kind == "verifier" and not task.verifiable:
        raise UserError(f"scoring.kind=verifier needs a task with reference answers; {task.name} has none")
    check_strategies(cfg, cfg.run.eval_strategies, task)  # refused now, not at the end
    local = connect(cfg)
    timeline.mark("cluster")
    route_actor_output(run_dir)
    check_gpus(cfg, ray.cluster_resources().get("GPU", 0.0))  # before any actor starts
    plan = check_fits(cfg, models.policy, models.reward, ray.cluster_resources())  # CPUs, GPUs, memory per GPU
    atomic_write(run_dir / "memory_plan.txt", (format_plan(plan) + "\n").encode())
    s = _start_session(cfg, run_dir, models, task, state, timeline, local=local)
    s.status = status
    status.update(
        state="running",
        policy_version=_trained_rounds(state),
        generators=_fleet_names(s),
    )
    steps = steps or [("collect", collect), ("train", train), ("evaluate", evaluate)]
    try:
        if s.state.get("last") is None:
            status.update(round=START, stage="evaluate")
            evaluate_start(s)
        reported = {row["round"] for row in load_rows(run_dir)}
        for r in range(cfg.run.rounds):
            t_round = time.perf_counter()
            todo = [(name, fn) for name, fn in steps if not s.done(r, name)]
            if not todo and r in reported:
                continue  # finished before this resume: its row (and its time/round_s) stays as it was
            for name, fn in todo:
                t = time.perf_counter()
                rescale(s, {})  # `evolve-ray scale` between stages (collect also applies it while it runs)
                status.update(round=r, stage=name, generators=_fleet_names(s))
                metrics = fn(s, r)
                metrics[f"time/{name}_s"] = time.perf_counter() - t
                if name == "collect" and (first := ray.get(s.buffer.first_candidate_at.remote())) is not None:
                    s.timeline.mark("first_candidate", at=first)
                metrics |= {"fleet/generators": float(len(s.generators)), "fleet/scorers": float(len(s.scorers))}
                s.mark(r, name, metrics)
                log.info(stage_line(r, name, metrics))
                if "policy/version" in metrics:
                    status.update(policy_version=int(metrics["policy/version"]))
                if name == "train" and r == cfg.run.rounds - 1:
                    s.trainer.stop()  # no more training: its teardown overlaps the last evaluation
            row = read_json(round_dir(run_dir, r) / "metrics.json") | {"round": r}
            row.setdefault("time/round_s", time.perf_counter() - t_round)
            append_row(run_dir, row)
        write_report(run_dir)
        log.info("run complete: %s (report.md, report.json, plots/)", run_dir)
    except BaseException:
        s.close(abort=True)
        raise
    s.close()


def connect(cfg: Config) -> bool:
    """Join the configured cluster, or start a local one (dashboard on 127.0.0.1 by default).
    Returns whether it started one (no node can join it: `evolve-ray scale` judges by its size)."""
    global _started_local
    if ray.is_initialized():
        return _started_local  # a second stage in this process (Stage 2 after Stage 1) keeps the first's answer
    c = cfg.cluster
    if c.address:
        with keep_sigterm():  # the command's SIGTERM handler, not Ray's (interrupt.py)
            ray.init(address=c.address, log_to_driver=True)
        return False
    cores = os.cpu_count() or 1
    num_cpus, reserved = local_cpus(cfg, cores)
    if c.num_cpus:
        sized = f"{c.num_cpus} logical CPUs (cluster.num_cpus)"
    else:
        sized = (
            f"{num_cpus} logical CPUs on {cores} cores (logical CPUs are a scheduling budget, not cores: the roles "
            f"reserve {reserved:g}, and the rest is room for `evolve-ray scale` to add a generator and a scorer)"
        )
    # address="local": always a fresh cluster, even if RAY_ADDRESS or a `ray start` on this machine
    # (/tmp/ray/ray_current_cluster) would otherwise make ray.init join that one.
    with keep_sigterm(), _slow_start_is_one_line():
        info = ray.init(
            address="local",
            num_cpus=c.num_cpus or num_cpus,
            include_dashboard=c.include_dashboard,
            dashboard_host=c.dashboard_host,
        )
    _started_local = True
    ctx = ray.get_runtime_context()
    where = f"dashboard at http://{info.dashboard_url}" if info.dashboard_url else "no dashboard"
    log.info("started a local Ray cluster (node %s) with %s; %s", ctx.get_node_id()[:8], sized, where)
    return True


@contextlib.contextmanager
def _slow_start_is_one_line() -> Iterator[None]:
    """Ray gives a new local node 30 s (fixed in ray._private.node) to register, and raises a bare
    Exception past it: on a machine busy with other work that is one line naming the cause."""
    try:
        yield
    except Exception as e:
        if "timed out during startup" not in str(e):
            raise
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        raise UserError(
            f"the local Ray cluster did not start: its node did not register within Ray's 30 s (load average "
            f"{load} on {os.cpu_count()} cores: the machine is busy); run it again when other work is done"
        ) from None


def _engine_env(run_dir: Path) -> dict[str, str]:
    # The engine cache goes inside the run directory unless the caller already chose one.
    return {
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(run_dir / ".cache" / "vllm")),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


def _start_session(
    cfg: Config, run_dir: Path, models: ResolvedModels, task: Any, state: dict, timeline: Timeline, *, local: bool
) -> Session:
    trained = _trained_rounds(state)
    policy = str(checkpoint_dir(run_dir, trained - 1)) if trained else models.policy
    fleet = Fleet(
        cfg,
        run_dir,
        policy=policy,
        version=trained,
        reward=models.reward,
        env={"env_vars": _engine_env(run_dir)},
        task=task,
    )
    infos = fleet.ready()
    timeline.mark("generators_ready")
    log.info("generators ready: %s", ", ".join(f"{i['index']}:{i['backend']}@v{i['version']}" for i in infos))
    # The worker group is first needed at the end of the first collect: it starts once the
    # generators are up (not beside them, where it slowed their start) and overlaps the start
    # evaluation and the first collect. train_round waits for it if it is not up yet.
    trainer = TrainerGroup(cfg, policy, run_dir, models.tokenizer, reference_model=models.policy)
    trainer.start()
    timeline.mark("trainer_launched")
    counts = {"generator": len(fleet.generators), "scorer": len(fleet.scorers)}
    control = start_control(run_dir, counts, Capacity.of(cfg, local=local))
    exporter = MetricsExporter(run_dir.name, cfg.run.trackers, to_dict(cfg), str(run_dir / "trackers"))
    exporter.publish({"gen/backend_vllm": float(infos[0]["backend"] == "vllm")}, step=0)
    return Session(
        cfg=cfg,
        run=run_dir,
        models=models,
        fleet=fleet,
        trainer=trainer,
        exporter=exporter,
        task=task,
        control=control,
        timeline=timeline,
        state=state,
        generator_infos=infos,
    )


def _fleet_names(s: Session) -> list[str]:
    backend = s.generator_infos[0]["backend"] if s.generator_infos else "?"
    return [f"{i}:{backend}" for i in sorted(s.fleet.actors["generator"])]


def _trained_rounds(state: dict) -> int:
    """How many rounds' training finished (= the policy version the generators must serve)."""
    last = state.get("last")
    if last is None:
        return 0
    r, stage = last["round"], last["stage"]
    return r + 1 if STAGES.index(stage) >= STAGES.index("train") else r


def _served_version(s: Session) -> int:
    return ray.get(s.generators[0].version.remote())


# ----------------------------------------------------------------------------------------------
# Standalone evaluation (`evolve-ray eval`)


def eval_model(
    cfg: Config,
    model_path: str,
    out_dir: Path,
    *,
    strategy: str,
    turns: int,
    num_samples: int = 1,
    temperature: float | None = None,
) -> dict[str, Any]:
    """Evaluate one checkpoint under `strategy` on the task's eval prompts; writes eval.parquet and
    eval.json (the metrics with the strategy's N, K and temperature). `temperature` None: greedy
    for one chain, generation.temperature for several."""
    set_level(cfg.run.log_level)
    check_writable(out_dir)
    n, k = grid_of(strategy, num_samples, turns)
    t = default_temperature(strategy, n, cfg.generation.temperature) if temperature is None else temperature
    run = StrategyRun(strategy, n, k, t)
    task = make_task(cfg.data)
    check_strategies(cfg, [strategy], task)
    picks = picks_with_reward_model(cfg, [strategy])
    models = resolve_models(replace(cfg, model={"policy": model_path}), picks=picks)
    connect(cfg)
    route_actor_output(out_dir)  # the actors' lines go to OUT/run.log
    check_gpus(cfg, ray.cluster_resources().get("GPU", 0.0), training=False)
    fleet = Fleet(
        cfg,
        out_dir,
        policy=models.policy,
        version=0,
        reward=models.reward,
        env={"env_vars": _engine_env(out_dir)},
        task=task,
    )
    try:
        metrics = evaluate_prompts(
            fleet.generators,
            fleet.scorers,
            task=task,
            prompts=task.prompts("eval", cfg.data.eval_prompts),
            round_=0,
            run=run,
            reward_scores=cfg.scoring.kind == "reward_model",
            tolerance=cfg.run.unchanged_tolerance,
            out_file=out_dir / "eval.parquet",
        )
    finally:
        fleet.close()
    record = {"model": model_path, "strategy": strategy, "num_samples": n, "turns": k, "temperature": t}
    if strategy in BEST_OF_N:  # never the verifier: its pick is pass@N (eval/final_oracle_accuracy)
        record["picked_by"] = f"reward model {models.reward}"
    write_json(out_dir / "eval.json", finite_row(metrics | record))
    return metrics | record
