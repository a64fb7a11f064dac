#!/usr/bin/env bash
# The GPU checks on one CUDA GPU, with torch only (no Ray, no vLLM): FSDP2 bf16 steps over fp32
# masters (alone, and against the fp32 CPU steps) and the small-lr precision test on CUDA.
# Needs torch, transformers, tokenizers, safetensors, pyyaml, jinja2 and pytest (with
# pytest-timeout, which pyproject's `timeout` setting uses); evolve_ray is found through PYTHONPATH,
# so no install. A minute or two on an H100. Usage: tests/gpu/run_gpu_checks.sh [pytest args]
# (PYTHON=... picks the interpreter; default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
# What the GPU tests import must not pull in ray or vllm (they are absent on a bare torch machine).
"$PY" -c "
import sys
import evolve_ray.train.batching, evolve_ray.train.parallel, evolve_ray.train.step, tests.fsdp_case
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm'})
assert not heavy, f'imported {heavy}'
"
exec timeout 540 "$PY" -m pytest -q -p no:cacheprovider -o addopts= -rA --timeout 300 tests/gpu "$@"
