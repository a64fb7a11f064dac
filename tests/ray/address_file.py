"""The machine's Ray address file, kept as it was by the tests that start a cluster beside the
session's: `ray start` and ray.cluster_utils record their head there, where a plain `ray.init()` of
anyone on this machine would find it. Under pytest-xdist two such modules can run at once in two
workers; a lock makes the second wait, so neither puts back the other's address."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray._common.utils import get_ray_address_file


@contextmanager
def address_file_kept() -> Iterator[None]:
    path = Path(get_ray_address_file(None))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".test-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        saved = path.read_bytes() if path.exists() else None
        try:
            yield
        finally:
            if saved is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(saved)
