"""The progress display of a run: the current cell, cells done, and an estimate of the time left;
before it starts, whom it waits for and how far that run is."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dlarena.errors import DlarenaError
from dlarena.orchestrate.lock import describe
from dlarena.plan.cell import Cell
from dlarena.report.units import format_duration, format_seconds
from dlarena.store.database import Store, StoredResult
from dlarena.wording import counted

# Off a terminal (a log file, CI) the waiting line cannot be rewritten in place, so a new one is
# written at most this often: a wait of an hour leaves 60 lines, not thousands.
WAIT_LOG_S = 60.0


def waiting_line(holder: dict[str, Any], waited_s: float) -> str:
    """``waiting 2 min 05 s for run X (pid, database, since): 3 of 12 processes done; ...``."""
    return (f"waiting {format_duration(waited_s)} for {describe(holder)}{_holder_progress(holder)}"
            " to finish measuring on this machine (Ctrl-C to give up)")


def _holder_progress(holder: dict[str, Any]) -> str:
    """How many of its processes the holding run has finished, read from its database ('' if unknown)."""
    run_id, db = holder.get("run_id"), holder.get("db")
    if not run_id or not db:
        return ""
    try:
        store = Store.open(Path(db), create=False)
        try:
            finished, planned = store.process_counts(str(run_id))
        finally:
            store.close()
    except (DlarenaError, sqlite3.Error, OSError):  # gone, locked, another schema: show who, not how far
        return ""
    return f", {finished} of {counted(planned, 'process')} done," if planned else ""


class Progress:
    """Writes one line per finished cell; on a terminal, the running cell is shown as it goes."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.total = self.done = 0
        self.repetitions = 1
        self.started = 0.0
        self.waiting_shown = False  # a live waiting line is on the screen, to be ended by a newline
        self.logged_wait = -WAIT_LOG_S

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def begin(
        self, run_id: str, cells: int, repetitions: int = 1, already_done: int = 0, processes: int | None = None,
    ) -> None:
        """``already_done``: processes a resumed run had stored before; ``processes``: the planned
        total where cells differ in their number of processes."""
        self._end_waiting()
        planned = processes if processes is not None else cells * repetitions
        self.total, self.done, self.started = planned - already_done, 0, time.monotonic()
        self.repetitions = repetitions
        resumed = f", {counted(already_done, 'process')} stored before" if already_done else ""
        shape = (f"{counted(cells, 'cell')} x {counted(repetitions, 'process')}" if planned == cells * repetitions
                 else f"{counted(cells, 'cell')}, {counted(planned, 'process')}")
        self._write(f"run {run_id}: {shape}{resumed}\n")

    def note(self, text: str) -> None:
        self._end_waiting()
        self._write(f"{text}\n")

    def waiting(self, holder: dict[str, Any], waited_s: float) -> None:
        """Whom the run waits for and how far that run is: rewritten in place on a terminal, else
        one line at the start and then every WAIT_LOG_S."""
        if not self.enabled:
            return
        line = waiting_line(holder, waited_s)
        if self.live:
            self._write(f"\r\x1b[K{line}")
            self.waiting_shown = True
        elif waited_s - self.logged_wait >= WAIT_LOG_S:
            self._write(f"{line}\n")
            self.logged_wait = waited_s

    def _end_waiting(self) -> None:
        if self.waiting_shown:
            self.waiting_shown = False
            self._write("\n")

    def skip(self, count: int) -> None:
        """Planned processes that will not run (the cell's earlier process was not ok)."""
        self.total -= count

    def _eta(self) -> str:
        if self.done == 0:
            return "estimating"
        per_cell = (time.monotonic() - self.started) / self.done
        return f"about {format_duration(per_cell * (self.total - self.done))} left"

    def _label(self, cell: Cell, repetition: int, of: int | None) -> str:
        count = of or self.repetitions
        which = f" (process {repetition + 1}/{count})" if count > 1 else ""
        return f"{cell.label()}{which}"

    def start(self, cell: Cell, repetition: int = 0, of: int | None = None) -> None:
        if self.live:
            label = self._label(cell, repetition, of)
            self._write(f"\r\x1b[K[{self.done + 1}/{self.total}] {label} ... ({self._eta()})")

    def finish(self, cell: Cell, result: StoredResult, median_s: float | None = None, of: int | None = None) -> None:
        self.done += 1
        trained = result.data.get("accuracy") if result.status == "ok" else None
        if trained:
            reached = trained["epochs_to_target"]
            epochs = counted(len(trained["epochs"]), "epoch")
            outcome = (f"ok, test accuracy {trained['final_accuracy']:.1%} after {epochs}"
                       + (f", target reached in {format_seconds(trained['time_to_target_s'])}" if reached else ""))
        elif result.status == "ok" and median_s is not None:
            outcome = f"ok, median {format_seconds(median_s)} per step"
        else:
            outcome = f"{result.status}: {result.message}"
        prefix = "\r\x1b[K" if self.live else ""
        label = self._label(cell, result.repetition, of)
        self._write(f"{prefix}[{self.done}/{self.total}] {label}: {outcome} ({self._eta()})\n")

    def end(self, interrupted: bool = False) -> None:
        elapsed = format_duration(time.monotonic() - self.started)
        if interrupted:  # on a terminal, the live line of the cell that was cut stays in view
            self._write(f"{chr(10) if self.live else ''}stopped after {elapsed}\n")
        else:
            self._write(f"done in {elapsed}\n")
