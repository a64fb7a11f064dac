"""Reporting: report rows and tables, plots, status, metric keys, exports (reads the run directory)."""
