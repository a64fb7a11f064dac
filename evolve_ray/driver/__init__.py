"""The driver: runs the stages, owns the run directory, starts and scales the actors."""
