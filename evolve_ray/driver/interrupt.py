"""SIGTERM ends a run the way Ctrl-C does: an exception in the main thread, so the driver stops
its actors and trainer, records the run as interrupted and stops its cluster before it leaves.

`ray.init` installs Ray's own SIGTERM handler (in a process that starts a local cluster, one that
kills the cluster's processes and calls `sys.exit(1)` wherever the main thread is): the driver's
last calls then ran against a dead cluster, and its core worker printed a native stack trace.
The `evolve-ray` command installs `raise_on_sigterm` first, and `keep_sigterm` puts it back
after `ray.init`. Code that did not install it (tests, library use) keeps Ray's handler. No ray here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another stop signal) received: handled like Ctrl-C, exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_received: list[int] = []


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated(signum)


def stop_signal() -> int | None:
    """The stop signal this process received, if any: a `Terminated` raised while the main thread
    waits in Ray (ray.get, ray.wait) comes out as a plain KeyboardInterrupt, Ray's own."""
    return _received[0] if _received else None


def raise_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (call from the main thread, at an entry point)."""
    signal.signal(signal.SIGTERM, _raise)


@contextmanager
def keep_sigterm() -> Iterator[None]:
    """Around `ray.init`: if `raise_on_sigterm` was installed, it is installed again afterwards."""
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _raise
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, _raise)
