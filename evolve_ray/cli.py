"""The `evolve-ray` command. Each subcommand is a few lines; user errors print one line."""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from evolve_ray.core.strategies import STRATEGIES
from evolve_ray.driver import console
from evolve_ray.driver.interrupt import keep_sigterm, raise_on_sigterm, stop_signal
from evolve_ray.errors import UserError
from evolve_ray.experiments.comparison import LR_GRID

log = logging.getLogger("evolve_ray")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of overrides")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. training.beta=0.05 (repeatable)",
    )


def _at_least(lo: int):
    def parse(raw: str) -> int:
        value = int(raw)
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {lo}")
        return value

    return parse


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{raw} is not a finite number >= 0")
    return value


def _smoke_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the config at toy size on this machine: sizes, counts and devices shrunk, tiny stand-in models and "
        "data written under RUN/smoke, every other setting as configured",
    )


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's, vLLM's and the actors' log lines too (always in RUN/run.log)",
    )


def cmd_print_config(args: argparse.Namespace) -> int:
    from evolve_ray.config import dump_yaml, load_config
    from evolve_ray.driver.memory_plan import check_plan, format_plan, plan_for

    cfg = load_config(args.config, args.sets)
    print(dump_yaml(cfg), end="")
    plan = plan_for(cfg)  # no cluster here: its CPU and GPU totals are shown as asked only
    print("".join(f"# {line}\n" for line in format_plan(plan).splitlines()), end="")  # comments: still YAML
    check_plan(plan)  # a role that cannot fit: one line, exit 2
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    import dataclasses

    from evolve_ray.models.tiny import CHAT_SPEC, TinySpec, build_tiny, build_tiny_chat

    if args.style == "llama3":
        if args.family != "llama":
            raise UserError("--style llama3 builds Llama models; drop --family or use --family llama")
        paths = build_tiny_chat(args.out, dataclasses.replace(CHAT_SPEC, seed=args.seed))
    else:
        paths = build_tiny(args.out, TinySpec(family=args.family, seed=args.seed))
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def _run_config(args: argparse.Namespace, sets: list[str]):
    """The resolved config of `run`/`sft`: --config, --set, --out; with --smoke, shrunk (smoke.py)."""
    from evolve_ray.config import load_config

    sets = list(sets) + ([f"run.out={args.out}"] if args.out else [])
    cfg = load_config(args.config, sets)
    if not args.smoke:
        return cfg
    from evolve_ray.driver.smoke import smoke_config

    return smoke_config(cfg, Path(cfg.run.out) / "smoke")


def cmd_run(args: argparse.Namespace) -> int:
    from evolve_ray.driver.pipeline import resume_run, run
    from evolve_ray.reporting.report import closing_text

    if args.resume:
        if args.out:
            raise UserError("--out cannot be used with --resume: a resumed run stays in its directory (RUN)")
        if args.smoke:
            raise UserError("--smoke cannot be used with --resume: a resumed run keeps its stored settings")
        print(closing_text(resume_run(Path(args.resume), config=args.config, sets=args.sets)))
        return 0
    print(closing_text(run(_run_config(args, args.sets))))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from evolve_ray.driver.pipeline import run_sft, stage1_checkpoint
    from evolve_ray.reporting.report import closing_text

    cfg = _run_config(args, list(args.sets) + ([f"sft.data={args.data}"] if args.data else []))
    sft_dir = run_sft(cfg)
    print(closing_text(sft_dir))
    sets = [*args.sets, *([f"sft.data={args.data}"] if args.data else [])]
    again = ["evolve-ray", "run", *(["--config", args.config] if args.config else [])]
    again += [a for s in sets for a in ("--set", s)] + ["--smoke"] * args.smoke + ["--out", cfg.run.out]
    print(f"Stage 1 checkpoint: {stage1_checkpoint(sft_dir.parent)}")
    print(f"Stage 2, the EVOLVE rounds from it (same settings: it reuses this Stage 1): {shlex.join(again)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from evolve_ray.config import DEMO_SETS, load_config
    from evolve_ray.driver.loop import run
    from evolve_ray.reporting.report import closing_text

    sets = [*DEMO_SETS, *args.sets, f"run.out={args.out}"]
    cfg = load_config(args.config, sets)
    if cfg.sft.data:
        raise UserError("sft.data: the demo starts from its built-in Stage-1 model; run Stage 1 with `evolve-ray sft`")
    print(closing_text(run(cfg)))  # the config defaults (+ DEMO_SETS) are the demo
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from evolve_ray.reporting.status import format_status, status_json

    print(status_json(Path(args.run)) if args.json else format_status(Path(args.run)))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from evolve_ray.driver.control import request_scale

    scaled = request_scale(args.run, {"generator": args.generators, "scorer": args.scorers}, address=args.address)
    print(f"{args.run}: now aiming for {scaled.wanted['generator']} generator(s), {scaled.wanted['scorer']} scorer(s)")
    if scaled.note:
        print(f"evolve-ray: warning: {scaled.note}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from evolve_ray.config import load_config
    from evolve_ray.driver.loop import eval_model
    from evolve_ray.reporting.report import turn_series
    from evolve_ray.reporting.report_strategies import final_line
    from evolve_ray.reporting.strategy_study import REFINES_K, SAMPLES_N

    sets = list(args.sets) + (["data.task=file", f"data.path={args.data}"] if args.data else [])
    cfg = load_config(args.config, sets)
    # Each strategy's own grid (core.strategies.chain_grid): N only for the parallel ones, K only for chains;
    # a flag the strategy would drop is refused, as config options are.
    if args.num_samples is not None and args.strategy not in SAMPLES_N:
        raise UserError(f"--num-samples is set but --strategy {args.strategy} runs one chain; remove it")
    if args.turns is not None and args.strategy not in REFINES_K:
        raise UserError(f"--turns is set but --strategy {args.strategy} does not refine; remove it")
    metrics = eval_model(
        cfg,
        args.model,
        Path(args.out),
        strategy=args.strategy,
        turns=3 if args.turns is None else args.turns,
        num_samples=4 if args.num_samples is None else args.num_samples,
        temperature=args.temperature,
    )
    for quantity in ("accuracy", "score"):
        series = turn_series(metrics, quantity)
        if series:
            print(f"{quantity:>9} by turn (chain 0): " + "  ".join(f"t{t}={v:.3f}" for t, v in enumerate(series)))
    print(final_line(args.strategy, metrics))
    print(f"wrote {args.out}/eval.json and eval.parquet")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from evolve_ray.experiments.reproduce import reproduce

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.smoke:  # one seed, one round
        seeds, args.rounds = seeds[:1], 1
    try:
        lrs = tuple(float(x) for x in args.lrs.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--lrs {args.lrs!r}: expected comma-separated numbers, e.g. 1e-5,5e-5") from None
    reproduce(
        Path(args.out),
        seeds=seeds,
        rounds=args.rounds,
        smoke=args.smoke,
        config=args.config,
        sets=tuple(args.sets),
        command="evolve-ray " + " ".join(sys.argv[1:]),
        only=tuple(x.strip() for x in args.arms.split(",") if x.strip()),
        lrs=lrs,
        docs_page=Path(args.docs_page) if args.docs_page else None,
    )
    print((Path(args.out) / "reproduce.md").read_text(encoding="utf-8"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evolve_ray.reporting.export import MODEL_FORMATS, export, export_model

    if args.format in MODEL_FORMATS:
        ckpt = export_model(Path(args.run), args.format, Path(args.out))
        print(f"wrote the {args.format} policy of {ckpt} to {args.out}")
        return 0
    n = export(Path(args.run), args.format, Path(args.out))
    print(f"wrote {n} records to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evolve_ray.reporting.report import write_report

    run = Path(args.run)
    if not (run / "report.json").exists():
        raise UserError(f"{run} has no report.json (no round has finished yet)")
    print(write_report(run))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from evolve_ray.bench.runner import parse_only, run_bench

    flags = [f"--only {args.only}"] * bool(args.only) + ["--large"] * args.large + ["--smoke"] * args.smoke
    flags += [f"--docs-page {args.docs_page}"] * bool(args.docs_page)
    command = " ".join(["evolve-ray bench", *flags, f"--out {args.out}"])
    docs_page = Path(args.docs_page) if args.docs_page else None
    run_bench(
        parse_only(args.only), Path(args.out), command=command, large=args.large, smoke=args.smoke, docs_page=docs_page
    )
    return 0


def job_main(argv: list[str] | None = None) -> int:
    """Entry point of jobs/run_evolve.py: join the cluster the job was submitted to, then run."""
    ap = argparse.ArgumentParser(prog="run_evolve.py")
    _config_args(ap)
    ap.add_argument("--out", help="run directory on storage the cluster keeps (overrides run.out)")
    ap.add_argument("--resume", metavar="RUN")
    _verbose_arg(ap)
    args = ap.parse_args(argv)
    console.setup(verbose=args.verbose)
    raise_on_sigterm()  # `ray job stop` sends SIGTERM: the run stops like on Ctrl-C

    def go() -> int:
        import ray

        from evolve_ray.config import load_config
        from evolve_ray.driver.pipeline import resume_run, run
        from evolve_ray.driver.resume_settings import plan_resume
        from evolve_ray.reporting.report import closing_text

        if args.resume and args.out:
            raise UserError("--out cannot be used with --resume: a resumed run stays in its directory (RUN)")
        sets = list(args.sets) + ([f"run.out={args.out}"] if args.out else [])
        # Errors (a bad value, a setting a resume may not change) before joining the cluster.
        cfg = None if args.resume else load_config(args.config, sets)
        if args.resume:
            plan_resume(Path(args.resume), args.config, sets)
        with keep_sigterm():
            ray.init(address="auto")
        if cfg is None:
            print(closing_text(resume_run(Path(args.resume), config=args.config, sets=sets)))
        else:
            print(closing_text(run(cfg)))
        return 0

    return _guarded(go)


# A full or read-only disk is the user's to fix, not a bug: one line, like a UserError.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _user_message(e: BaseException | None) -> str | None:
    """The one-line message of a user error (or full disk) behind `e`, else None (a bug: traceback).

    Follows exception chains, Ray's wrapping of errors raised inside actors (RayTaskError.cause) and
    Ray Train's of errors raised in its workers (WorkerGroupError.worker_failures), so a run
    directory that fills up under the buffer actor still reads as one line.
    """
    ray_task_error = sys.modules["ray.exceptions"].RayTaskError if "ray.exceptions" in sys.modules else ()
    train_errors = sys.modules.get("ray.train.v2.api.exceptions")
    worker_group_error = train_errors.WorkerGroupError if train_errors else ()
    for _ in range(20):  # chains are short; a bound instead of cycle bookkeeping
        if e is None:
            return None
        if ray_task_error and isinstance(e, ray_task_error):
            e = e.cause
            continue
        if worker_group_error and isinstance(e, worker_group_error) and e.worker_failures:
            e = e.worker_failures[min(e.worker_failures)]  # rank 0's (or the first failed rank's) own error
            continue
        if isinstance(e, UserError):
            return str(e)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return f"cannot write {e.filename or 'the run directory'}: {e.strerror}"
        e = e.__cause__ or e.__context__
    return None


def _guarded(fn) -> int:
    try:
        return fn()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (interrupt.py): the driver has stopped the run
        signum = stop_signal()
        why = f"stopped by {signal.Signals(signum).name}" if signum else "interrupted"
        print(f"evolve-ray: {why}; continue with `evolve-ray run --resume RUN`", file=sys.stderr)
        return 128 + signum if signum else 130
    except BrokenPipeError:  # the reader stopped reading (`status RUN --json | head`): not a failure of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return 141  # 128 + SIGPIPE, as a command the signal ended
    except Exception as e:
        message = _user_message(e)
        if message is None:
            raise
        print(f"evolve-ray: error: {message}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evolve-ray", description="EVOLVE self-refinement training on Ray.")
    ap.set_defaults(verbose=False)  # commands without --verbose start no actors
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_setup_commands, _run_commands, _control_commands, _eval_commands, _output_commands):
        add(sub)
    return ap


def _setup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """print-config, build-tiny."""
    p = sub.add_parser("print-config", help="print the resolved config")
    _config_args(p)
    p.set_defaults(fn=cmd_print_config)

    p = sub.add_parser("build-tiny", help="build a tiny tokenizer, policy and reward model (no hub)")
    p.add_argument("out")
    p.add_argument("--family", choices=["llama", "qwen2"], default="llama")
    p.add_argument(
        "--style",
        choices=["byte", "llama3"],
        default="byte",
        help="byte: the demo's fp32 byte-level models; llama3: bf16, a Llama-3 chat template, pad == EOS",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_build_tiny)


def _run_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """run, sft, demo: the commands that train."""
    p = sub.add_parser("run", help="run EVOLVE rounds from a config")
    _config_args(p)
    p.add_argument("--out", help="run directory (overrides run.out)")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a run from its last completed stage; --set/--config may change run.rounds, generators, "
        "scorers, evaluation, logging and cluster settings; other changes are refused",
    )
    _smoke_arg(p)
    _verbose_arg(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser(
        "sft", help="Stage 1: self-refinement-aware SFT on a preference file (into RUN/sft), evaluated per turn"
    )
    _config_args(p)
    p.add_argument("--data", help="preference file or hub dataset id (overrides sft.data)")
    p.add_argument("--out", help="run directory (overrides run.out); Stage 1 goes in OUT/sft")
    _smoke_arg(p)
    _verbose_arg(p)
    p.set_defaults(fn=cmd_sft)

    p = sub.add_parser("demo", help="the built-in tiny demo on a local Ray cluster")
    _config_args(p)
    p.add_argument("--out", default="runs/demo")
    _verbose_arg(p)
    p.set_defaults(fn=cmd_demo)


def _control_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """status, scale: a running run, from outside it."""
    p = sub.add_parser("status", help="a run's state (running or not, round, stage, metrics), from its directory")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("scale", help="change a running run's number of generators or scorers")
    p.add_argument("run", metavar="RUN", help="the run directory (or, with --address, the run's name)")
    p.add_argument("--generators", type=_at_least(1), help="generators wanted")
    p.add_argument("--scorers", type=_at_least(1), help="scorers wanted")
    p.add_argument("--address", help="the cluster's address (default: from RUN/control.json)")
    p.set_defaults(fn=cmd_scale)


def _eval_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """eval, reproduce."""
    p = sub.add_parser("eval", help="per-turn evaluation of a checkpoint on held-out prompts")
    _config_args(p)
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--data", help="prompt file (default: the built-in task's eval split)")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="chain", help="inference strategy (default chain)")
    p.add_argument(
        "--num-samples", type=_at_least(1), help="N: answers or chains of parallel, parallel_chain, vote (default 4)"
    )
    p.add_argument(
        "--turns",
        type=_at_least(0),
        help="K: refinement turns after the first answer of chain, parallel_chain, vote (default 3)",
    )
    p.add_argument(
        "--temperature",
        type=_non_negative,
        help="sampling temperature (default: 0, greedy, for one chain; generation.temperature for several)",
    )
    p.add_argument("--out", default="runs/eval")
    _verbose_arg(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("reproduce", help="the paper's comparison on the built-in task: 8 arms x N seeds, tables")
    _config_args(p)
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the round-based arms")
    p.add_argument("--smoke", action="store_true", help="1 seed, 1 round, smallest sizes (a quick check)")
    p.add_argument("--arms", default="", help="comma-separated arms to run (default: all)")
    p.add_argument(
        "--lrs", default=",".join(f"{x:g}" for x in LR_GRID), help="learning-rate grid each arm chooses from"
    )
    _docs_page_arg(p, "reproduce", "docs/results.md", "arm")
    _verbose_arg(p)
    p.set_defaults(fn=cmd_reproduce)


def _output_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """export, report, bench."""
    p = sub.add_parser(
        "export",
        help="export pairs (trl), eval outputs (alpaca_eval), candidates (jsonl), or a LoRA run's last policy "
        "(adapter: the PEFT adapter; merged: base + adapter as one checkpoint in model.dtype)",
    )
    p.add_argument("--run", required=True)
    p.add_argument("--format", required=True, choices=["trl", "alpaca_eval", "jsonl", "adapter", "merged"])
    p.add_argument("--out", required=True, help="a file, or for adapter and merged a directory")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("report", help="rewrite report.md and plots/ from report.json")
    p.add_argument("--run", required=True)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("bench", help="benchmarks against peers measured in the same run (bench.json + bench.md)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="comma-separated benchmarks (default: all but --large)")
    p.add_argument("--out", default="runs/bench/bench.json", help="JSON file; the markdown table goes beside it")
    p.add_argument("--large", action="store_true", help="also push a 500M-parameter model")
    _docs_page_arg(p, "bench", "docs/benchmarks.md", "benchmark")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: smallest sizes, one rep
    p.set_defaults(fn=cmd_bench)


def _docs_page_arg(p: argparse.ArgumentParser, block: str, page: str, unit: str) -> None:
    p.add_argument(
        "--docs-page",
        metavar="PAGE",
        help=f"also replace the `{block}` block of this markdown page (e.g. {page}) with {block}.md and a line "
        f"naming this command; a page without that block is refused before any {unit} runs",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(verbose=args.verbose)
    return _guarded(lambda: args.fn(args))


def entry() -> None:
    """The `evolve-ray` command: main, then a quick exit. SIGTERM stops a run like Ctrl-C (interrupt.py)."""
    raise_on_sigterm()
    exit_quickly(main())


def exit_quickly(rc: int) -> None:
    """End the process without Python's teardown of the modules a run imported (torch, vLLM,
    Ray Train): 1.4-1.8 s after every run otherwise. Ray's cluster is stopped here, without the
    0.5 s pause of Ray's own exit hook, then the exit hooks run and the streams are flushed. With
    a non-daemon thread still running, the process exits the usual way (which waits for it)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(rc)
    atexit._run_exitfuncs()  # logging's flush and close, and any other library's hook
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(rc)


if __name__ == "__main__":
    entry()
