"""The `evolve-ray` command. Each subcommand is a few lines; user errors print one line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evolve_ray.errors import UserError

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


def cmd_print_config(args: argparse.Namespace) -> int:
    from evolve_ray.config import dump_yaml, load_config

    print(dump_yaml(load_config(args.config, args.sets)), end="")
    return 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from evolve_ray.models.tiny import TinySpec, build_tiny

    paths = build_tiny(args.out, TinySpec(family=args.family, seed=args.seed))
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from evolve_ray.config import load_config
    from evolve_ray.loop import resume_run, run

    if args.resume:
        resume_run(Path(args.resume))
        return 0
    sets = list(args.sets) + ([f"run.out={args.out}"] if args.out else [])
    run(load_config(args.config, sets))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from evolve_ray.config import load_config
    from evolve_ray.loop import run

    sets = list(args.sets) + [f"run.out={args.out}"]
    run(load_config(args.config or _demo_config(), sets))
    return 0


def _demo_config() -> str:
    return str(Path(__file__).resolve().parent / "recipes" / "demo.yaml")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evolve-ray", description="EVOLVE self-refinement training on Ray.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("print-config", help="print the resolved config")
    _config_args(p)
    p.set_defaults(fn=cmd_print_config)

    p = sub.add_parser("build-tiny", help="build a tiny tokenizer, policy and reward model (no hub)")
    p.add_argument("out")
    p.add_argument("--family", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_build_tiny)

    p = sub.add_parser("run", help="run EVOLVE rounds from a config")
    _config_args(p)
    p.add_argument("--out", help="run directory (overrides run.out)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last completed stage")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="the built-in tiny demo on a local Ray cluster")
    _config_args(p)
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except UserError as e:
        print(f"evolve-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evolve-ray: interrupted; continue with `evolve-ray run --resume RUN`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
