#!/usr/bin/env bash
# Lint, format, types, then the tests (arguments go to pytest). CI runs it after
# `bash cluster/install.sh --dev` (.ci/run); the venv is the one install.sh made.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EVOLVE_RAY_VENV:-.venv}
"$venv/bin/ruff" check evolve_ray tests jobs
"$venv/bin/ruff" format --check evolve_ray tests jobs
"$venv/bin/mypy"  # files and settings: pyproject.toml [tool.mypy]
# Two pytest-xdist workers, each with its own session Ray cluster; a module's tests stay in one
# worker (loadscope), so a module's shared run is made once. EVOLVE_RAY_TEST_WORKERS=0: one process.
"$venv/bin/python" -m pytest -n "${EVOLVE_RAY_TEST_WORKERS:-2}" --dist loadscope "$@"
