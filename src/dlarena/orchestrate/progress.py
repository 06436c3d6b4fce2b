"""The progress display of a run: the current cell, cells done, and an estimate of the time left;
before it starts, whom it waits for and how far that run is.

On a terminal the running cell, processes done of all and the estimate are a rich progress bar, and
each finished cell is a line printed above it (the scrollback keeps the record); elsewhere (a log
file, CI) the same lines are written plain, one per event, with no escape codes.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dlarena.errors import DlarenaError
from dlarena.orchestrate.lock import describe
from dlarena.plan.cell import Cell
from dlarena.report.units import format_duration, format_seconds
from dlarena.store.database import Store, StoredResult
from dlarena.wording import counted

if TYPE_CHECKING:  # rich is imported on a terminal only (orchestrate/terminal.py)
    from rich.console import Console
    from rich.live import Live
    from rich.progress import TaskID

    from dlarena.orchestrate.terminal import Bar

# Off a terminal (a log file, CI) the waiting line cannot be rewritten in place, so a new one is
# written at most this often: a wait of an hour leaves 60 lines, not thousands.
WAIT_LOG_S = 60.0

# TERM values of terminals that cannot move the cursor (Emacs' shell, some CI runners that give a
# tty): the list rich itself treats as dumb (Console.is_dumb_terminal). They get the plain lines.
DUMB_TERMINALS = ("dumb", "unknown")


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
    """Writes one line per finished cell; on a terminal, the running cell is shown as it goes.

    This class alone decides terminal or not (``live``); rich only draws on a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty() and os.environ.get("TERM", "").lower() not in DUMB_TERMINALS
        self.console: Console | None = None
        if self.live:
            from dlarena.orchestrate import terminal

            self.console = terminal.console(self.stream)
        self.total = self.done = 0
        self.repetitions = 1
        self.started = 0.0
        self.logged_wait = -WAIT_LOG_S
        self._waiting: Live | None = None  # the waiting line on a terminal, while one is shown
        self._waiting_line = ""
        self._bar: Bar | None = None  # the running run's bar on a terminal, from its first process
        self._task: TaskID | None = None

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def _say(self, line: str) -> None:
        """One line of the record: on a terminal printed above the bar or waiting line, else plain."""
        if self.console is not None:
            from dlarena.orchestrate import terminal

            terminal.say(self.console, line)
        else:
            self._write(f"{line}\n")

    def _held(self) -> None:
        """A live display left on screen (Ctrl-C while waiting, an error mid-run) is taken off at exit,
        so that the terminal is not left without its cursor."""
        atexit.unregister(self.close)
        if self._waiting is not None or self._bar is not None:
            atexit.register(self.close)

    def close(self) -> None:
        """Take any live display off the terminal; harmless when none is shown or it is called again."""
        self._end_waiting()
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None
        self._held()

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
        self._say(f"run {run_id}: {shape}{resumed}")

    def note(self, text: str) -> None:
        self._end_waiting()
        self._say(text)

    def waiting(self, holder: dict[str, Any], waited_s: float) -> None:
        """Whom the run waits for and how far that run is: rewritten in place on a terminal, else
        one line at the start and then every WAIT_LOG_S."""
        if not self.enabled:
            return
        line = waiting_line(holder, waited_s)
        if self.console is not None:
            from dlarena.orchestrate import terminal

            self._waiting_line = line
            if self._waiting is None:
                self._waiting = terminal.start_waiting(self.console, line)
                self._held()
            else:
                terminal.show_waiting(self._waiting, line)
        elif waited_s - self.logged_wait >= WAIT_LOG_S:
            self._write(f"{line}\n")
            self.logged_wait = waited_s

    def end_waiting(self) -> None:
        """The wait is over: the last waiting line stays on screen, without its spinner."""
        self._end_waiting()

    def _end_waiting(self) -> None:
        if self._waiting is not None:
            from dlarena.orchestrate import terminal

            terminal.stop_waiting(self._waiting, self._waiting_line)
            self._waiting = None
            self._held()

    def extend(self, count: int) -> None:
        """Processes a cell turned out to need (measure/repetitions.py, a slow spell's re-measurement)."""
        self.total += count
        self._show()

    def skip(self, count: int) -> None:
        """Planned processes that will not run (the cell's earlier process was not ok)."""
        self.total -= count
        self._show()

    def _eta(self) -> str:
        if self.done == 0:
            return "estimating"
        per_cell = (time.monotonic() - self.started) / self.done
        return f"about {format_duration(per_cell * (self.total - self.done))} left"

    def _label(self, cell: Cell, repetition: int, of: int | None) -> str:
        count = of or self.repetitions
        which = f" (process {repetition + 1}/{count})" if count > 1 else ""
        return f"{cell.label()}{which}"

    def _show(self, label: str | None = None) -> None:
        """Bring the bar up to date (on a terminal): the estimate is the one the lines give."""
        if self._bar is None or self._task is None:
            return
        fields: dict[str, Any] = {"description": label} if label is not None else {}
        self._bar.update(self._task, completed=self.done, total=self.total, eta=self._eta(), refresh=True, **fields)

    def start(self, cell: Cell, repetition: int = 0, of: int | None = None) -> None:
        if self.console is None:
            return
        self._end_waiting()
        if self._bar is None:
            from dlarena.orchestrate import terminal

            self._bar, self._task = terminal.start_bar(self.console, self.total, self.done, self._eta())
            self._held()
        self._show(self._label(cell, repetition, of))

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
        label = self._label(cell, result.repetition, of)
        self._say(f"[{self.done}/{self.total}] {label}: {outcome} ({self._eta()})")
        self._show()

    def end(self, interrupted: bool = False) -> None:
        elapsed = format_duration(time.monotonic() - self.started)
        if interrupted and self._bar is not None:  # on a terminal, the bar of the cell that was cut stays in view
            self._bar.live.transient = False
        self.close()
        self._say(f"stopped after {elapsed}" if interrupted else f"done in {elapsed}")
