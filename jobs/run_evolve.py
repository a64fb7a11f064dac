"""Ray job entry point:
ray job submit --working-dir . -- python jobs/run_evolve.py --config jobs/configs/demo.yaml --out RUN
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the submitted copy of the package

from evolve_ray.cli import exit_quickly, job_main  # noqa: E402

exit_quickly(job_main())
