"""evolve_ray: EVOLVE (arXiv 2502.05605) on Ray. Importing the package imports nothing heavy."""

__version__ = "0.1.0"
