"""Ray job entry point for the benchmarks, on the cluster the job was submitted to:
ray job submit --working-dir . -- python jobs/run_bench.py [--only NAME[,NAME]] [--large] --out FILE
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the submitted copy of the package

import ray  # noqa: E402

from evolve_ray.cli import main  # noqa: E402

ray.init(address="auto")  # joined: the bench uses this cluster instead of starting one
sys.exit(main(["bench", *sys.argv[1:]]))
