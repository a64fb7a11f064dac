"""The one base class of user errors: the CLI prints these as a single line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, paths, data): reported as one clear line."""
