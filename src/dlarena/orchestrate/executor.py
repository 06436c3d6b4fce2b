"""Executors run one cell's worker and hand back what happened. The local one uses a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dlarena.measure.peak import Peak, probe
from dlarena.plan.cell import Cell
from dlarena_runner.resources import current_rss_bytes

# How much of the worker's output to keep: the end of a traceback, or of a crash report.
OUTPUT_TAIL_BYTES = 8192
# How often the worker's memory (with its children's) is read against the cell's limit. A read is a
# few /proc files (tens of microseconds), so polling costs the measured cores nothing visible, and a
# worker can grow by at most what it allocates in a quarter second past its limit.
MEMORY_POLL_S = 0.25
# cgroup v2 counts the kills of its out-of-memory killer here; an increase during a cell that died
# by SIGKILL means the kernel, not dlarena, killed it.
CGROUP_EVENTS = Path("/sys/fs/cgroup/memory.events")


@dataclass(frozen=True)
class Execution:
    command: list[str]  # re-runs the cell by hand, printing its result
    data: dict[str, Any] | None  # the worker's JSON result, None if it wrote none
    exit_code: int | None  # negative: killed by that signal
    timed_out: bool
    output_tail: str
    wall_s: float
    over_memory: bool = False  # killed by us past the cell's memory limit
    kernel_oom: bool = False  # killed by the kernel's out-of-memory killer
    peak_memory_bytes: int = 0  # the largest resident memory of the worker and its children seen
    memory_limit_bytes: int | None = None
    # Where it ran when not on this machine (the Ray executor): the node's name, that machine's
    # snapshot (environment.snapshot), and the canary's readings there just before and after the worker.
    node: str | None = None
    machine: dict[str, Any] | None = None
    canary_s: tuple[float, float] | None = None
    # Set when the worker never ran where it was sent (the node lacks the framework): its status and why.
    status: tuple[str, str] | None = None

    @classmethod
    def unrun(cls, status: str, message: str, node: str | None = None, machine: dict[str, Any] | None = None,
              output_tail: str = "") -> Execution:
        """No worker result: none was started (the node lacks the framework, or is gone), or its node died."""
        return cls(command=[], data=None, exit_code=None, timed_out=False, output_tail=output_tail, wall_s=0.0,
                   node=node, machine=machine, status=(status, message))


@dataclass(frozen=True)
class NodePeak:
    """The peak probe (measure/peak.py) at one thread count of a machine the executor measures on:
    this one (``node`` None), or a cluster node with its snapshot; ``peak`` None where it failed."""

    node: str | None
    machine: dict[str, Any] | None
    threads: int
    peak: Peak | None


class Executor(Protocol):
    # How many cells it runs at once: one per machine (concurrent measurements corrupt each other).
    slots: int
    # Whether its workers run on other machines, which then say themselves whether they have a framework.
    remote: bool

    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution: ...

    def cancel(self) -> None:
        """Ctrl-C reached the main thread while other threads wait in ``execute``: end their workers."""

    def peaks(self, threads: Sequence[int]) -> list[NodePeak]:
        """The peak GFLOP/s of each machine it measures on, at each of ``threads``."""


def worker_command(cell: Cell, python: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """The worker's command line, as stored with its result: run by hand, it re-runs the cell.

    A framework in a managed environment runs on that environment's interpreter, with its variables
    given through env(1) so that the stored command carries them too; one on an interpreter that
    cannot import dlarena runs dlarena_runner.job_worker on a job the host writes first."""
    from dlarena.frameworks.registry import FRAMEWORKS

    prefix: list[str] = []
    info = FRAMEWORKS.get(cell.framework)
    if python is None and info is not None and info.environment is not None:
        from dlarena.environments import manage

        python, variables = manage.launch(info.environment, require=False)
        prefix = ["env", *(f"{name}={value}" for name, value in sorted(variables.items()))]
    if info is not None and info.job_module is not None:
        from dlarena.frameworks.job import worker_arguments

        return [*prefix, python or sys.executable,
                *worker_arguments(cell, info.job_module, dict(info.variables), extra_args)]
    return [*prefix, python or sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json(), *extra_args]


class LocalExecutor:
    """One fresh worker process per cell, in its own process group so that a kill takes all of it."""

    slots = 1
    remote = False

    def __init__(
        self, python: str | None = None, memory_limit_bytes: int | None = None, stop: threading.Event | None = None,
    ) -> None:
        self.python = python
        self.memory_limit_bytes = memory_limit_bytes
        # Set by whoever runs several cells from threads (verify): Ctrl-C reaches only the main
        # thread, so the others learn of it here and take their worker down as Ctrl-C would.
        self.stop = stop

    def cancel(self) -> None:
        if self.stop is not None:
            self.stop.set()

    def peaks(self, threads: Sequence[int]) -> list[NodePeak]:
        return [NodePeak(None, None, count, probe(count)) for count in threads]

    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution:
        command = worker_command(cell, self.python, extra_args)
        kills_before = _kernel_oom_kills()
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
                guard = _start_guard(process.pid)
                timed_out = over_memory = False
                peak = 0
                try:
                    deadline = time.monotonic() + timeout_s
                    while True:
                        try:
                            process.wait(timeout=max(0.0, min(MEMORY_POLL_S, deadline - time.monotonic())))
                            break
                        except subprocess.TimeoutExpired:
                            pass
                        peak = max(peak, family_rss_bytes(process.pid))
                        if self.memory_limit_bytes and peak > self.memory_limit_bytes:
                            over_memory = True
                            break
                        if time.monotonic() >= deadline:
                            timed_out = True
                            break
                        if self.stop is not None and self.stop.is_set():
                            raise KeyboardInterrupt
                except BaseException:  # Ctrl-C: take the running cell down with us
                    _kill_group(process.pid)
                    process.wait()
                    raise
                finally:
                    # Also after a normal exit: helpers it started (compiler pools) must not outlive it.
                    _kill_group(process.pid)
                    process.wait()
                    _release(guard)
            wall = time.perf_counter() - start
            killed = timed_out or over_memory
            data = _read_result(result_path) if not killed else None
            kernel_oom = process.returncode == -signal.SIGKILL and not killed and _kernel_oom_kills() > kills_before
            return Execution(
                command=command, data=data, exit_code=None if killed else process.returncode,
                timed_out=timed_out, output_tail=_tail(log_path), wall_s=wall, over_memory=over_memory,
                kernel_oom=kernel_oom, peak_memory_bytes=peak, memory_limit_bytes=self.memory_limit_bytes,
            )


def _start_guard(group: int) -> subprocess.Popen[bytes]:
    """The guard that kills ``group`` should this process die before it does (orchestrate/guard.py): the
    process started here exits once the guard has detached, leaving this process the pipe's only writer."""
    guard = subprocess.Popen(
        [sys.executable, "-m", "dlarena.orchestrate.guard", str(group)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    guard.wait()
    return guard


def _release(guard: subprocess.Popen[bytes]) -> None:
    """Let a guard go once its group is dead: it reads end-of-file, finds nothing to kill, and exits."""
    if guard.stdin is not None:
        guard.stdin.close()


def family_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += current_rss_bytes(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except (OSError, ValueError):  # it ended between two reads
            pass
    return total


def _kernel_oom_kills() -> int:
    try:
        for line in CGROUP_EVENTS.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


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
