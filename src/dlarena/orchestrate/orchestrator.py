"""Expand a suite into cells, run them one at a time, classify each outcome and store it at once.

This module never imports a framework: availability is read from package metadata, and everything
that touches a framework happens in a worker process.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from dlarena.environment import code_version, framework_versions, snapshot
from dlarena.errors import DlarenaError
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.measure.aggregate import CellFigures, aggregate, cell_groups
from dlarena.measure.canary import MEASURED_AGAIN, Canary, Judgement, judge
from dlarena.measure.repetitions import (
    MAX_REMEASURES,
    TIME_SPENT,
    Need,
    Split,
    decide,
    half_width,
    kalibera_jones,
    process_half_width,
)
from dlarena.orchestrate.executor import Execution, Executor, LocalExecutor, worker_command
from dlarena.orchestrate.progress import Progress
from dlarena.plan.cell import Cell
from dlarena.plan.suite import Suite
from dlarena.report.units import format_bytes
from dlarena.spec.catalogue import get_workload
from dlarena.store.database import PlannedCell, Store, StoredResult, cell_state
from dlarena.wording import counted
from dlarena_runner.record import RESULT_SCHEMA

STATUSES: tuple[str, ...] = (
    "ok", "failed", "timeout", "oom", "unsupported", "unavailable", "mismatch", "interrupted",
)
# A worker reports these itself; anything else it writes is treated as a failure of ours.
WORKER_STATUSES = frozenset({"ok", "failed", "oom", "unsupported", "unavailable"})


@dataclass(frozen=True)
class RunSummary:
    """Where a run stands after a `dlarena run` (or a resume) and what this invocation did."""

    run_id: str
    counts: dict[str, int]  # the run's cells by state (store.cell_state): a status, or interrupted, pending
    interrupted: bool
    processes: dict[str, int] = field(default_factory=dict)  # processes this invocation ran, by status
    not_started: int = 0  # processes it had planned but did not start (Ctrl-C)
    elapsed_s: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)  # per status but ok, the message of its first cell
    nothing_to_resume: bool = False

    def unmeasured(self) -> str | None:
        """One sentence when the run ended with every cell's status known and not one of them ok."""
        if self.interrupted or not self.counts or "ok" in self.counts or set(self.counts) & {"interrupted", "pending"}:
            return None
        parts = [f"{count} {status}" + (f" ({self.reasons[status]})" if self.reasons.get(status) else "")
                 for status, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))]
        return f"no cell could be measured: {', '.join(parts)}"


def summarize(store: Store, run_id: str, interrupted: bool = False, **this_invocation: Any) -> RunSummary:
    """The run's cells by state, read back from the store, with what this invocation did."""
    counts: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for cell in store.run_cells(run_id):
        state = cell_state(cell)
        counts[state] = counts.get(state, 0) + 1
        if cell["final_message"]:
            reasons.setdefault(state, str(cell["final_message"]))
    return RunSummary(run_id, counts, interrupted, reasons=reasons, **this_invocation)


def plan(suite: Suite, nodes: Sequence[str] = ()) -> list[PlannedCell]:
    """The suite's cells, each once, or (given cluster ``nodes``) once on every node, node by node."""
    code = code_version()
    cells = suite.planned()
    pinned = [(replace(cell, node=node), timeout, repetitions)
              for node in nodes for cell, timeout, repetitions in cells] if nodes else cells
    return [
        PlannedCell(cell=cell, timeout_s=timeout, key=cell.key(code, FRAMEWORKS[cell.framework].versions()),
                    repetitions=repetitions)
        for cell, timeout, repetitions in pinned
    ]


def classify(execution: Execution, timeout_s: float) -> tuple[str, str]:
    """The status and message of a finished worker."""
    if execution.status is not None:  # decided where it was sent: no worker there, or the node died
        return execution.status
    if execution.timed_out:
        return "timeout", f"killed after the cell's limit of {timeout_s:g} s (raise it with --timeout)"
    if execution.over_memory:
        return "oom", (f"killed at {format_bytes(execution.peak_memory_bytes)} of resident memory, over the"
                       f" cell's limit of {format_bytes(execution.memory_limit_bytes or 0)} (--memory-limit)")
    if execution.kernel_oom:
        return "oom", (f"killed by the kernel's out-of-memory killer (peak seen"
                       f" {format_bytes(execution.peak_memory_bytes)})")
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
        message=info.unavailable_message(),
        stderr_tail="", command=worker_command(cell), exit_code=None, wall_s=0.0,
        started_at=stamp, finished_at=stamp, data={},
    )


def _known_unsupported(cell: Cell, reason: str) -> StoredResult:
    stamp = _utc()
    return StoredResult(status="unsupported", message=reason, stderr_tail="", command=worker_command(cell),
                        exit_code=None, wall_s=0.0, started_at=stamp, finished_at=stamp, data={})


def execute_cell(cell: Cell, timeout_s: float, executor: Executor, repetition: int = 0) -> StoredResult:
    """One worker process for ``cell``, classified; none for a cell the registry already knows the
    framework cannot run (a layer type it lacks, the transformer layers its module does not build)."""
    info = FRAMEWORKS[cell.framework]
    reason = info.unsupported_reason(get_workload(cell.workload).network.layer_types(), cell.scenario)
    if reason is not None:
        return _known_unsupported(cell, reason)
    if not executor.remote and not info.is_installed():  # a remote node says whether it has the framework
        return _unavailable(cell)
    started = _utc()
    execution = executor.execute(cell, timeout_s)
    status, message = classify(execution, timeout_s)
    data = execution.data or {}
    if data and data.get("schema") != RESULT_SCHEMA:  # a worker of another dlarena: never mix its figures
        status, message = "failed", (f"the worker wrote a result of schema {data.get('schema')}, and this dlarena "
                                     f"reads schema {RESULT_SCHEMA}")
        data = {}
    if status == "ok" and not (data.get("samples_s") or data.get("accuracy", {}).get("epochs")):
        status, message = "failed", "the worker reported ok but measured no step"
    return StoredResult(
        status=status, message=message, stderr_tail=execution.output_tail if status != "ok" else "",
        command=execution.command or worker_command(cell), exit_code=execution.exit_code, wall_s=execution.wall_s,
        started_at=started, finished_at=_utc(), data=data, repetition=repetition, node=execution.node,
        machine=execution.machine, canary_s=execution.canary_s,
    )


# A machine's peak GFLOP/s at a thread count: by (cluster node, threads); the node is None for this machine.
Peaks = dict[tuple[str | None, int], float]


def probe_peaks(run_id: str, planned: Sequence[PlannedCell], store: Store, progress: Progress,
                executor: Executor) -> Peaks:
    """The peak GFLOP/s of each machine the executor measures on (this one, or each cluster node) at
    every CPU thread count of the run, stored with the run and that machine's environment.

    Probed at the start of every run rather than once per machine: a probe taken while something else
    ran would understate the peak of every later run, and the probe costs seconds.
    """
    peaks: Peaks = {}
    counts = sorted({item.cell.threads for item in planned if item.cell.device == "cpu"})
    for found in executor.peaks(counts) if counts else []:
        where = f"node {found.node}: " if found.node is not None else ""
        if found.peak is None:
            progress.note(f"{where}peak probe at {counted(found.threads, 'thread')} failed; % of peak will be missing")
            continue
        store.record_peak(run_id, found.peak, found.node, found.machine)
        peaks[(found.node, found.threads)] = found.peak.gflops
        progress.note(f"{where}peak at {counted(found.threads, 'thread')}: {found.peak.gflops:.1f} GFLOP/s float32"
                      f" ({found.peak.library})")
    return peaks


@dataclass
class _Pending:
    """A cell of a run with the processes it still needs."""

    cell_id: int
    item: PlannedCell
    done: int  # ok processes stored, counted up as the run goes
    status: str = "ok"  # ok while every process so far was ok
    planned: int = 0  # the processes it needs as far as the run knows: its pilot, then more by need
    next_index: int = 0  # the index of its next process (an accuracy cell's seed offset)
    remeasures: int = 0  # processes added in place of ones run in a slow spell
    pilot: int = 0  # the processes it gets whatever its interval: the run's or its sweep's repetitions
    costs_s: list[float] = field(default_factory=list)  # each process's time besides its measured steps
    walls_s: list[float] = field(default_factory=list)  # each process's wall time
    split: Split | None = None  # Kalibera and Jones' split of effort, from the pilot
    why: str | None = None  # why it has processes enough (measure/repetitions.WHY), once it has
    width: float | None = None  # the half-width its last decision saw (_width), a share of the median

    @property
    def timing(self) -> bool:
        return self.item.cell.scenario != "accuracy"


def _pending(cell_id: int, item: PlannedCell, done: int, planned: int) -> _Pending:
    return _Pending(cell_id, item, done, planned=planned, next_index=done, pilot=planned)


def run_suite(
    suite: Suite, store: Store, argv: Sequence[str], executor: Executor | None = None,
    progress: Progress | None = None, run_id: str | None = None, nodes: Sequence[str] = (),
    placement: dict[str, Any] | None = None,
) -> RunSummary:
    """Run every cell of ``suite`` (on every one of the cluster ``nodes`` when given): its pilot of
    ``repetitions`` processes, then more as ``suite.need`` says (measure/repetitions.py), storing each
    process as soon as it ends."""
    planned = plan(suite, nodes)
    limit = suite.memory_limit_bytes()
    run_id, cell_ids = store.start_run(
        snapshot(), suite.name, suite.version, suite.source, argv, code_version(), planned, suite.repetitions,
        run_id=run_id, memory_limit_bytes=limit, need=suite.need, placement=placement,
    )
    pending = [_pending(cell_id, item, 0, item.repetitions or suite.repetitions)
               for cell_id, item in zip(cell_ids, planned, strict=True)]
    return _execute(run_id, pending, suite.need, store, executor or LocalExecutor(memory_limit_bytes=limit), progress)


class ResumeError(DlarenaError):
    """A run that cannot be resumed as it was."""


def resume_run(
    store: Store, run_id: str | None, argv: Sequence[str], allow_changes: bool = False,
    executor: Executor | None = None, progress: Progress | None = None,
) -> RunSummary:
    """Run the processes a run still lacks; refuse if dlarena or a framework changed, unless allowed."""
    run = dict(store.run(run_id))
    run_id = str(run["id"])
    code = code_version()
    pending, changed = [], set()
    for stored in store.run_cells(run_id):
        cell = Cell.from_json(stored["config"])
        key = cell.key(code, FRAMEWORKS[cell.framework].versions()) if cell.framework in FRAMEWORKS else ""
        if key != stored["cell_key"]:
            changed.add(cell.framework)
        if _lacks(stored):
            pending.append(_pending(stored["cell_id"], PlannedCell(cell, stored["timeout_s"], stored["cell_key"],
                                                                   stored["repetitions"]), stored["ok"],
                                    stored["repetitions"]))
    check_placement(run, executor is not None and executor.remote)
    changes = _changes(store, run, code, changed)
    if changes and not allow_changes:
        raise ResumeError(f"run {run_id} cannot be resumed as it was: {'; '.join(changes)}; its results would mix"
                          " versions (pass --allow-changes to resume anyway, and the run will record it)")
    store.record_resume(run_id, argv, changes)
    executor = executor or LocalExecutor(memory_limit_bytes=run["memory_limit_bytes"])
    need = Need(run["target_ci"] or 0.0, run["max_processes"] or 1, run["time_budget_s"])
    return _execute(run_id, pending, need, store, executor, progress)


def check_placement(run: Mapping[str, Any], remote: bool) -> None:
    """A run resumes where it measured: on a Ray cluster's nodes (``runs.placement``) or on this machine."""
    if run["placement"] is not None and not remote:
        raise ResumeError(f"run {run['id']} measured on the nodes of a Ray cluster: resume it with --executor ray"
                          " (and the cluster's --address)")
    if run["placement"] is None and remote:
        raise ResumeError(f"run {run['id']} measured on this machine: resume it without --executor ray")


def _lacks(cell: dict[str, Any]) -> bool:
    """Whether a cell of ``Store.run_cells`` still has processes to run."""
    return cell["final_status"] is None and cell["ok"] < cell["repetitions"]


def nothing_to_resume(store: Store, run_id: str) -> RunSummary | None:
    """The run's summary if every cell of it has its result, else None (a resume has work to do).

    Read without the machine's lock, so that `run --resume` of a finished run answers at once. A
    run cut between its last result and its end is marked finished here.
    """
    if any(_lacks(cell) for cell in store.run_cells(run_id)):
        return None
    if store.run(run_id)["status"] != "finished":
        store.finish_run(run_id, "finished")
    return summarize(store, run_id, nothing_to_resume=True)


def _changes(store: Store, run: dict[str, Any], code: str, frameworks: set[str]) -> list[str]:
    """What differs now from when the run started, in words."""
    changes = []
    if run["code_version"] != code:
        changes.append(f"dlarena was {run['code_version']} and is now {code}")
    then = store.environment(run["environment_id"]).get("frameworks", {})
    now = framework_versions()
    for name in sorted(frameworks):
        info = FRAMEWORKS.get(name)
        if info is None:
            changes.append(f"framework {name} is no longer known")
            continue
        for dist in info.distributions:
            if then.get(dist) != now.get(dist):
                changes.append(f"{dist} was {then.get(dist, 'absent')} and is now {now.get(dist, 'absent')}")
    return list(dict.fromkeys(changes))


def _execute(
    run_id: str, pending: list[_Pending], need: Need, store: Store, executor: Executor | None,
    progress: Progress | None,
) -> RunSummary:
    """Run the missing processes of ``pending`` in rounds, storing each as soon as it ends.

    Each round gives one process to every cell that still needs one, so that a drift of the machine
    (heat, another program) hits every framework alike. A cell needs its pilot, then (a timing cell,
    when ``need`` is adaptive) one more process after each round while its interval is too wide and its
    budget lasts (measure/repetitions.decide); the steps of those later processes follow Kalibera and
    Jones' split, estimated from the pilot. A canary reading (measure/canary.py) before the first
    process and after each one records the machine's speed and marks a process that ran in a slow
    spell: when ``need`` is adaptive, the cell gets another process in its place (at most
    MAX_REMEASURES), and its figures leave the marked one out (canary.MEASURED_AGAIN; a fixed count
    stays fixed, the marked process in it). A cell whose process was not ok is not run again: its status is already
    known. Ctrl-C kills the running process, which is stored as ``interrupted`` (not final: a resume
    runs it again).
    """
    executor = executor or LocalExecutor()
    progress = progress or Progress(enabled=False)
    started_at = time.monotonic()
    progress.begin(run_id, len(pending), max((entry.planned for entry in pending), default=1),
                   sum(entry.done for entry in pending), processes=sum(entry.planned for entry in pending))
    store.set_run_status(run_id, "running")
    ran: dict[str, int] = {}
    launcher = _Launcher(executor, store, run_id, progress)
    canaries = _Canaries()
    try:
        peaks = probe_peaks(run_id, [entry.item for entry in pending], store, progress, executor)
        # A remote node's speed is its own: the launcher reads the canary there (_Canaries).
        if not executor.remote:
            canaries.start()
        while True:
            wanting = [entry for entry in pending if entry.status == "ok" and entry.done < entry.planned]
            if not wanting:
                break
            # the cells furthest behind first: a resumed run's cells catch up before the next round
            behind = min(entry.done for entry in wanting)
            launches = []
            for entry in (entry for entry in wanting if entry.done == behind):
                if _out_of_time(entry, need, time.monotonic() - started_at):
                    progress.skip(entry.planned - entry.done)
                    entry.planned, entry.why = entry.done, TIME_SPENT
                    store.set_cell_repetitions(entry.cell_id, entry.planned)
                    _store_figures(entry, _figures(entry, store, peaks)[1], need, store)
                    continue
                launches.append(entry)
            for entry, cell, result in launcher.run(launches):
                if result.wall_s > 0:  # a process ran: the machine's speed after it, and was it in a slow spell?
                    judgement = canaries.judge(result)
                    if result.status == "ok":
                        result.data["canary"] = {**judgement.as_dict(),
                                                 MEASURED_AGAIN: judgement.slow_spell and _remeasures(entry, need)}
                store.record_result(entry.cell_id, result)
                ran[result.status] = ran.get(result.status, 0) + 1
                median = None
                if result.status == "ok":
                    entry.done += 1
                    median = _after_ok(entry, result, need, store, progress, peaks)
                else:
                    progress.skip(entry.planned - entry.done - 1)
                entry.status = result.status
                progress.finish(cell, result, median, entry.planned)
    except KeyboardInterrupt:
        cut = launcher.interrupt()
        if cut:
            ran["interrupted"] = cut
        store.finish_run(run_id, "interrupted")
        progress.end(interrupted=True)
        # every process a cell still lacks, but the ones that were cut (their cells' counts are not yet up)
        left = sum(entry.planned - entry.done for entry in pending if entry.status == "ok")
        return summarize(store, run_id, interrupted=True, processes=ran, not_started=left - cut,
                         elapsed_s=time.monotonic() - started_at)
    finally:
        launcher.close()
    store.finish_run(run_id, "finished")
    progress.end()
    return summarize(store, run_id, processes=ran, elapsed_s=time.monotonic() - started_at)


class _Launcher:
    """Runs a round's processes: one at a time in this thread, or as many at once as the executor has
    slots (a cluster's nodes), from threads that only wait; results come back here, in the order they
    end, so that this thread stays the store's only writer."""

    def __init__(self, executor: Executor, store: Store, run_id: str, progress: Progress) -> None:
        self.executor, self.store, self.run_id, self.progress = executor, store, run_id, progress
        self.pool = ThreadPoolExecutor(max_workers=executor.slots) if executor.slots > 1 else None
        self.in_flight: dict[Future[StoredResult], tuple[_Pending, Cell, int, str]] = {}
        self.current: tuple[_Pending, Cell, int, str] | None = None  # the one running in this thread

    def _begin(self, entry: _Pending) -> tuple[_Pending, Cell, int, str]:
        cell = _process_cell(entry)
        index = entry.next_index
        entry.next_index += 1
        self.progress.start(cell, index, entry.planned)
        return entry, cell, index, _utc()

    def run(self, entries: Sequence[_Pending]) -> Iterator[tuple[_Pending, Cell, StoredResult]]:
        if self.pool is None:
            for entry in entries:
                self.current = self._begin(entry)
                result = execute_cell(self.current[1], entry.item.timeout_s, self.executor, self.current[2])
                cell, self.current = self.current[1], None
                yield entry, cell, result
            return
        for entry in entries:
            begun = self._begin(entry)
            self.in_flight[self.pool.submit(execute_cell, begun[1], entry.item.timeout_s, self.executor,
                                            begun[2])] = begun
        while self.in_flight:
            finished, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                entry, cell, _, _ = self.in_flight.pop(future)
                yield entry, cell, future.result()

    def interrupt(self) -> int:
        """Ctrl-C: end the processes in flight and store each as interrupted; how many there were."""
        self.executor.cancel()
        for future in self.in_flight:
            future.cancel()  # not started yet: never run, not stored
        wait([future for future in self.in_flight if not future.cancelled()])
        cut = [begun for future, begun in self.in_flight.items() if not future.cancelled()]
        if self.current is not None:
            cut.append(self.current)
        for entry, cell, index, started in cut:
            self.store.record_result(entry.cell_id, _interrupted(cell, index, started, self.run_id))
        self.in_flight.clear()
        self.current = None
        return len(cut)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Canaries:
    """The canary's readings of each machine a run measures on, and its judgement of each process.

    On this machine the canary is read here, after each process (its reading before is the one after the
    process before); on a cluster node the launcher reads it there before and after (StoredResult.canary_s),
    and each node's readings are judged against that node's alone."""

    def __init__(self) -> None:
        self.local = Canary()
        self.before_s: float | None = None
        self.nodes: dict[str | None, list[float]] = {}

    def start(self) -> None:
        self.before_s = self.local.read()

    def judge(self, result: StoredResult) -> Judgement:
        if result.canary_s is not None:  # read on its node
            readings = self.nodes.setdefault(result.node, [])
            readings.extend(result.canary_s)
            return judge(*result.canary_s, readings)
        judgement = self.local.bracket(self.before_s if self.before_s is not None else self.local.read())
        self.before_s = judgement.after_s
        return judgement


def _out_of_time(entry: _Pending, need: Need, elapsed_s: float) -> bool:
    """Whether a process beyond the cell's pilot would end past the run's time budget (at the cell's
    mean process time so far)."""
    if need.time_budget_s is None or entry.done < entry.pilot or not entry.walls_s:
        return False
    return elapsed_s + sum(entry.walls_s) / len(entry.walls_s) > need.time_budget_s


def _by_need(entry: _Pending, need: Need) -> bool:
    """Whether the cell's count of processes is by need: a timing cell of an adaptive run (an
    accuracy cell trains its planned seeds, and a fixed count stays fixed)."""
    return entry.timing and need.adaptive


def _remeasures(entry: _Pending, need: Need) -> bool:
    """Whether a process of ``entry`` run in a slow spell is measured again: up to MAX_REMEASURES
    times, where its count is by need."""
    return _by_need(entry, need) and entry.remeasures < MAX_REMEASURES


def _process_cell(entry: _Pending) -> Cell:
    """What the cell's next process runs: past the pilot, as many steps as Kalibera and Jones' split
    asks (never fewer than the suite's)."""
    cell = entry.item.cell.for_process(entry.next_index)
    if entry.split is not None and entry.split.steps_per_process > cell.measurement.min_steps:
        cell = replace(cell, measurement=replace(cell.measurement, min_steps=entry.split.steps_per_process))
    return cell


def _after_ok(
    entry: _Pending, result: StoredResult, need: Need, store: Store, progress: Progress, peaks: Peaks,
) -> float:
    """Store the cell's figures after an ok process and decide whether it needs another; its median."""
    cell = entry.item.cell
    samples = result.data.get("samples_s") or []
    entry.costs_s.append(max(0.0, result.wall_s - sum(samples)))
    entry.walls_s.append(result.wall_s)
    added = 0
    if (result.data.get("canary") or {}).get(MEASURED_AGAIN):
        entry.remeasures += 1
        added += 1
    processes, figures = _figures(entry, store, peaks)
    if _by_need(entry, need) and entry.split is None and entry.done >= entry.pilot and len(entry.costs_s) >= 2:
        entry.split = kalibera_jones(cell_groups(processes), entry.costs_s, need.target_ci, cell.measurement.min_steps)
    if not added and entry.done >= entry.planned:  # every process it was known to need is in: enough now?
        width = entry.width = _width(figures)
        counted_processes = entry.done - entry.remeasures
        entry.why = decide(width, counted_processes, entry.pilot, need if _by_need(entry, need) else Need(0.0))
        if entry.why is None:
            added += 1
    if added:
        entry.planned += added
        store.set_cell_repetitions(entry.cell_id, entry.planned)
        progress.extend(added)
    _store_figures(entry, figures, need, store)
    return figures.summary.median_s


def _width(figures: CellFigures) -> float | None:
    """How far the cell's median is known: the wider of its bootstrap interval and Student's t on its
    used processes' medians (repetitions.process_half_width); None with one process used."""
    by_processes = process_half_width(figures.summary.process_medians_s)
    bootstrap = half_width(figures.summary.median_s, figures.summary.ci_low_s, figures.summary.ci_high_s)
    if by_processes is None or bootstrap is None:
        return None
    return max(by_processes, bootstrap)


def _figures(entry: _Pending, store: Store, peaks: Peaks) -> tuple[list[dict[str, Any]], CellFigures]:
    """The cell's ok processes and its figures from them."""
    cell = entry.item.cell
    processes = store.ok_processes(entry.cell_id)
    # a cell of this machine, or pinned to a node; one that ran wherever a slot was free has no one machine
    peak = peaks.get((cell.node, cell.threads)) if cell.device == "cpu" else None
    return processes, aggregate(processes, cell.batch_size, cell.threads, peak)


def _store_figures(entry: _Pending, figures: CellFigures, need: Need, store: Store) -> None:
    figures.extra["repetitions"] = _repetition_figures(entry, figures, need)
    store.record_summary(entry.cell_id, figures)


def _repetition_figures(entry: _Pending, figures: CellFigures, need: Need) -> dict[str, Any]:
    """How many processes the cell ran and why, for the reports."""
    summary = figures.summary
    return {
        "why": entry.why, "ran": entry.done, "used": summary.processes, "pilot": entry.pilot,
        "remeasured": entry.remeasures,
        "half_width": entry.width,
        "target_ci": need.target_ci if _by_need(entry, need) else None,
        "max_processes": need.max_processes if _by_need(entry, need) else None,
        "time_budget_s": need.time_budget_s,
        "kalibera_jones": entry.split.as_dict() if entry.split else None,
    }


def _interrupted(cell: Cell, repetition: int, started: str, run_id: str) -> StoredResult:
    return StoredResult(
        status="interrupted", message=f"stopped by Ctrl-C; `dlarena run --resume {run_id}` runs it again",
        stderr_tail="", command=worker_command(cell), exit_code=None, wall_s=0.0, started_at=started,
        finished_at=_utc(), data={}, repetition=repetition,
    )
