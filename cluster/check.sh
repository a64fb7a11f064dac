#!/usr/bin/env bash
# Lint, format, types, then the tests (arguments go to pytest). CI runs it after
# `bash cluster/install.sh --dev` (.ci/run); the venv is the one install.sh made.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EVOLVE_RAY_VENV:-.venv}
"$venv/bin/ruff" check evolve_ray tests jobs
"$venv/bin/ruff" format --check evolve_ray tests jobs
"$venv/bin/mypy"  # files and settings: pyproject.toml [tool.mypy]
# Two pytest-xdist workers: the Ray tests in one (their xdist group, tests/ray/conftest.py), the
# pure tests spread over both. EVOLVE_RAY_TEST_WORKERS=0 runs everything in this process.
"$venv/bin/python" -m pytest -n "${EVOLVE_RAY_TEST_WORKERS:-2}" --dist loadgroup "$@"
