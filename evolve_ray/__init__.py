"""evolve_ray: EVOLVE (arXiv 2502.05605) on Ray. Importing the package imports nothing heavy."""

import time

__version__ = "0.1.0"
# When this interpreter first imported the package: where a driver's start-up ("imports",
# RUN/startup.json) begins. Not the process's creation: a shell that runs `install && evolve-ray`
# hands its own process, created before the install, to the last command.
IMPORTED_AT = time.time()
