#!/usr/bin/env bash
# Lint, format, types, then the tests (arguments go to pytest). CI runs it after
# `bash cluster/install.sh --dev` (.ci/run); the venv is the one install.sh made.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EVOLVE_RAY_VENV:-.venv}
"$venv/bin/ruff" check evolve_ray tests jobs
"$venv/bin/ruff" format --check evolve_ray tests jobs
"$venv/bin/mypy"  # files and settings: pyproject.toml [tool.mypy]
"$venv/bin/python" -m pytest "$@"
