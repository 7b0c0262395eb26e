"""A lock between processes on a file beside a path: the inventory's updates, synthetic worlds being drawn.

Imports nothing of the project, so any module may take turns on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive lock between processes on `<path>.lock` beside `path` (fcntl; released when the process
    dies): the inventory's updates, and synthetic worlds being drawn."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock} is held by another update for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
