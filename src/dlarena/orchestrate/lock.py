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


class BusyError(DlarenaError):
    """Another run is measuring on this machine and the user asked not to wait."""


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_VARIABLE) or DEFAULT_LOCK)


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another dlarena run"
    return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')}, database {holder.get('db', '?')},"
            f" since {holder.get('since', '?')})")


def _holder(handle: int) -> dict[str, Any]:
    try:
        text = os.pread(handle, 4096, 0).decode("utf-8", errors="replace")
        data = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def machine_lock(
    run_id: str, db: Path, wait: bool = True, on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the machine's measuring lock for the block; wait for it, or raise BusyError."""
    path = lock_path()
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise DlarenaError(f"cannot open the machine lock {path}: {error.strerror}; set ${LOCK_VARIABLE}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe(_holder(handle))
            if not wait:
                raise BusyError(f"{holder} is measuring on this machine; run again when it ends, or without"
                                " --no-wait to wait for it") from None
            if on_wait:
                on_wait(f"waiting for {holder} to finish measuring on this machine (Ctrl-C to give up)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        record = {"run_id": run_id, "pid": os.getpid(), "db": str(db.resolve()),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
