"""One machine, one measuring run at a time.

Two runs measuring side by side take cores, caches and memory bandwidth from each other, and both
report the damage as the frameworks' speed. A run therefore holds an exclusive lock on a file
shared by every dlarena on the machine (``flock``: the kernel releases it when the holder dies,
even by ``kill -9``, so a crashed run never blocks the next). The file names the holder, so that
the one waiting can say whom it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dlarena.errors import DlarenaError

# Overridable so that a test suite, or a user with a private machine slice, can use another file.
LOCK_VARIABLE = "DLARENA_LOCK"
DEFAULT_LOCK = Path(tempfile.gettempdir()) / "dlarena-measuring.lock"
# A waiting run tries the lock this often: a try is one system call, and a quarter second is nothing
# next to the minutes a run may wait. (Polling rather than a blocking flock lets the waiting line be
# refreshed; flock grants no order among waiters either way.)
LOCK_POLL_S = 0.25
# The waiting line is refreshed this often with the holder's progress (one read of its database).
WAIT_REFRESH_S = 2.0


class BusyError(DlarenaError):
    """Another run is measuring on this machine and the user asked not to wait."""


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_VARIABLE) or DEFAULT_LOCK)


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another dlarena run"
    name = f"run {holder['run_id']}" if holder.get("run_id") else "a dlarena run that is starting"
    return f"{name} (pid {holder.get('pid', '?')}, database {holder.get('db', '?')}, since {holder.get('since', '?')})"


def _holder(handle: int) -> dict[str, Any]:
    try:
        text = os.pread(handle, 4096, 0).decode("utf-8", errors="replace")
        data = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class HeldLock:
    """The lock while held: ``announce`` names the run in the lock file once it has an id."""

    def __init__(self, handle: int, db: Path) -> None:
        self.handle = handle
        self.record: dict[str, Any] = {"run_id": None, "pid": os.getpid(), "db": str(db.resolve()),
                                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write()

    def announce(self, run_id: str) -> None:
        self.record["run_id"] = run_id
        self._write()

    def _write(self) -> None:
        os.ftruncate(self.handle, 0)
        os.pwrite(self.handle, json.dumps(self.record).encode(), 0)


@contextlib.contextmanager
def machine_lock(
    db: Path, wait: bool = True, on_wait: Callable[[dict[str, Any], float], None] | None = None,
) -> Iterator[HeldLock]:
    """Hold the machine's measuring lock for the block; wait for it, or raise BusyError.

    While waiting, ``on_wait(holder, seconds waited)`` is called at once and then every
    ``WAIT_REFRESH_S``, with the holder as its lock file names it, so that the waiting run can show
    whom it waits for and how far that run is. The run's id is chosen once the lock is held (a run
    is stamped when it starts measuring, not when it was queued): the block calls ``announce``.
    """
    path = lock_path()
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise DlarenaError(f"cannot open the machine lock {path}: {error.strerror}; set ${LOCK_VARIABLE}") from None
    try:
        if not _try_lock(handle):
            if not wait:
                raise BusyError(f"{describe(_holder(handle))} is measuring on this machine; run again when it ends,"
                                " or without --no-wait to wait for it")
            _wait(handle, on_wait)
        held = HeldLock(handle, db)
        try:
            yield held
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def _try_lock(handle: int) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait(handle: int, on_wait: Callable[[dict[str, Any], float], None] | None) -> None:
    """Try the lock every LOCK_POLL_S until it is free, telling ``on_wait`` every WAIT_REFRESH_S."""
    started = time.monotonic()
    told = -WAIT_REFRESH_S
    while True:
        waited = time.monotonic() - started
        if on_wait and waited - told >= WAIT_REFRESH_S:
            on_wait(_holder(handle), waited)
            told = waited
        time.sleep(LOCK_POLL_S)
        if _try_lock(handle):
            return
