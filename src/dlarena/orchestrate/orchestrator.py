"""Expand a suite into cells, run them one at a time, classify each outcome and store it at once.

This module never imports a framework: availability is read from package metadata, and everything
that touches a framework happens in a worker process.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from dlarena.environment import code_version, snapshot
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.measure.aggregate import aggregate
from dlarena.measure.peak import probe
from dlarena.orchestrate.executor import Execution, Executor, LocalExecutor, worker_command
from dlarena.orchestrate.progress import Progress
from dlarena.plan.cell import Cell
from dlarena.plan.suite import Suite
from dlarena.store.database import PlannedCell, Store, StoredResult

STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "oom", "unsupported", "unavailable", "mismatch")
# A worker reports these itself; anything else it writes is treated as a failure of ours.
WORKER_STATUSES = frozenset({"ok", "failed", "oom", "unsupported", "unavailable"})


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    counts: dict[str, int]
    interrupted: bool


def plan(suite: Suite) -> list[PlannedCell]:
    code = code_version()
    return [
        PlannedCell(cell=cell, timeout_s=timeout, key=cell.key(code, FRAMEWORKS[cell.framework].versions()))
        for cell, timeout in suite.cells()
    ]


def classify(execution: Execution, timeout_s: float) -> tuple[str, str]:
    """The status and message of a finished worker."""
    if execution.timed_out:
        return "timeout", f"killed after the cell's limit of {timeout_s:g} s"
    data = execution.data
    if data is not None:
        status = str(data.get("status", "failed"))
        if status not in WORKER_STATUSES:
            return "failed", f"the worker reported an unknown status {status!r}"
        return status, str(data.get("message", ""))
    code = execution.exit_code
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "failed", f"the worker was killed by {name}"
    return "failed", f"the worker exited with code {code} without writing a result"


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _unavailable(cell: Cell) -> StoredResult:
    info = FRAMEWORKS[cell.framework]
    stamp = _utc()
    return StoredResult(
        status="unavailable",
        message=f"{cell.framework} is not installed (pip install 'dlarena[{info.extra}]')",
        stderr_tail="", command=worker_command(cell), exit_code=None, wall_s=0.0,
        started_at=stamp, finished_at=stamp, data={},
    )


def execute_cell(cell: Cell, timeout_s: float, executor: Executor, repetition: int = 0) -> StoredResult:
    """One worker process for ``cell``, classified."""
    if not FRAMEWORKS[cell.framework].is_installed():
        return _unavailable(cell)
    started = _utc()
    execution = executor.execute(cell, timeout_s)
    status, message = classify(execution, timeout_s)
    data = execution.data or {}
    if status == "ok" and not data.get("samples_s"):
        status, message = "failed", "the worker reported ok but measured no step"
    return StoredResult(
        status=status, message=message, stderr_tail=execution.output_tail if status != "ok" else "",
        command=execution.command, exit_code=execution.exit_code, wall_s=execution.wall_s,
        started_at=started, finished_at=_utc(), data=data, repetition=repetition,
    )


def probe_peaks(run_id: str, planned: Sequence[PlannedCell], store: Store, progress: Progress) -> dict[int, float]:
    """The machine's peak GFLOP/s at every CPU thread count of the run, stored with the run and its environment.

    Probed at the start of every run rather than once per machine: a probe taken while something else
    ran would understate the peak of every later run, and the probe costs seconds.
    """
    peaks: dict[int, float] = {}
    for threads in sorted({item.cell.threads for item in planned if item.cell.device == "cpu"}):
        peak = probe(threads)
        if peak is None:
            progress.note(f"peak probe at {threads} threads failed; % of peak will be missing")
            continue
        store.record_peak(run_id, peak)
        peaks[threads] = peak.gflops
        progress.note(f"peak at {threads} threads: {peak.gflops:.1f} GFLOP/s float32 ({peak.library})")
    return peaks


def run_suite(
    suite: Suite, store: Store, argv: Sequence[str], executor: Executor | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run every cell of ``suite`` in ``suite.repetitions`` processes, storing each as soon as it ends.

    Repetitions are interleaved: the first process of every cell, then the second of every cell, and
    so on, so that a drift of the machine (heat, another program) hits every framework alike. A cell
    whose process was not ok is not run again: its status is already known.
    """
    executor = executor or LocalExecutor()
    progress = progress or Progress(enabled=False)
    planned = plan(suite)
    run_id, cell_ids = store.start_run(
        snapshot(), suite.name, suite.version, suite.source, argv, code_version(), planned, suite.repetitions,
    )
    statuses: dict[int, str] = {}  # per cell: ok while every process so far was ok
    progress.begin(run_id, len(planned), suite.repetitions)
    try:
        peaks = probe_peaks(run_id, planned, store, progress)
        for repetition in range(suite.repetitions):
            for cell_id, item in zip(cell_ids, planned, strict=True):
                if statuses.get(cell_id, "ok") != "ok":
                    continue
                progress.start(item.cell, repetition)
                result = execute_cell(item.cell, item.timeout_s, executor, repetition)
                store.record_result(cell_id, result)
                median = None
                if result.status == "ok":
                    figures = aggregate(store.ok_processes(cell_id), item.cell.batch_size, item.cell.threads,
                                        peaks.get(item.cell.threads) if item.cell.device == "cpu" else None)
                    store.record_summary(cell_id, figures)
                    median = figures.summary.median_s
                else:
                    progress.skip(suite.repetitions - repetition - 1)
                statuses[cell_id] = result.status
                progress.finish(item.cell, result, median)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        progress.end()
        return RunSummary(run_id, _counts(statuses), interrupted=True)
    store.finish_run(run_id, "finished")
    progress.end()
    return RunSummary(run_id, _counts(statuses), interrupted=False)


def _counts(statuses: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return counts
