"""How the demo's warm start (evolve_ray/models/warm_start.py) is built: `python -m evolve_ray.experiments.warmstart.build`."""
