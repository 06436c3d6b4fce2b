"""Executors run one cell's worker and hand back what happened. The local one uses a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dlarena.plan.cell import Cell

# How much of the worker's output to keep: the end of a traceback, or of a crash report.
OUTPUT_TAIL_BYTES = 8192


@dataclass(frozen=True)
class Execution:
    command: list[str]  # re-runs the cell by hand, printing its result
    data: dict[str, Any] | None  # the worker's JSON result, None if it wrote none
    exit_code: int | None  # negative: killed by that signal
    timed_out: bool
    output_tail: str
    wall_s: float


class Executor(Protocol):
    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution: ...


def worker_command(cell: Cell, python: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    return [python or sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json(), *extra_args]


class LocalExecutor:
    """One fresh worker process per cell, in its own process group so that a kill takes all of it."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python

    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution:
        command = worker_command(cell, self.python, extra_args)
        with tempfile.TemporaryDirectory(prefix="dlarena-cell-") as folder:
            result_path = Path(folder) / "result.json"
            log_path = Path(folder) / "output.log"
            start = time.perf_counter()
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [*command, "--out", str(result_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                timed_out = False
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                except BaseException:  # Ctrl-C: take the running cell down with us
                    _kill_group(process.pid)
                    process.wait()
                    raise
                finally:
                    # Also after a normal exit: helpers it started (compiler pools) must not outlive it.
                    _kill_group(process.pid)
                    process.wait()
            wall = time.perf_counter() - start
            data = _read_result(result_path) if not timed_out else None
            return Execution(
                command=command, data=data, exit_code=None if timed_out else process.returncode,
                timed_out=timed_out, output_tail=_tail(log_path), wall_s=wall,
            )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
