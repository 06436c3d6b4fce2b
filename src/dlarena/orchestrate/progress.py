"""The progress display of a run: the current cell, cells done, and an estimate of the time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from dlarena.plan.cell import Cell
from dlarena.report.units import format_duration, format_seconds
from dlarena.store.database import StoredResult


class Progress:
    """Writes one line per finished cell; on a terminal, the running cell is shown as it goes."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.total = self.done = 0
        self.repetitions = 1
        self.started = 0.0

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def begin(
        self, run_id: str, cells: int, repetitions: int = 1, already_done: int = 0, processes: int | None = None,
    ) -> None:
        """``already_done``: processes a resumed run had stored before; ``processes``: the planned
        total where cells differ in their number of processes."""
        planned = processes if processes is not None else cells * repetitions
        self.total, self.done, self.started = planned - already_done, 0, time.monotonic()
        self.repetitions = repetitions
        resumed = f", {already_done} processes stored before" if already_done else ""
        shape = f"{cells} cells x {repetitions} processes" if planned == cells * repetitions else (
            f"{cells} cells, {planned} processes")
        self._write(f"run {run_id}: {shape}{resumed}\n")

    def note(self, text: str) -> None:
        self._write(f"{text}\n")

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
            outcome = (f"ok, test accuracy {trained['final_accuracy']:.1%} after {len(trained['epochs'])} epochs"
                       + (f", target reached in {format_seconds(trained['time_to_target_s'])}" if reached else ""))
        elif result.status == "ok" and median_s is not None:
            outcome = f"ok, median {format_seconds(median_s)} per step"
        else:
            outcome = f"{result.status}: {result.message}"
        prefix = "\r\x1b[K" if self.live else ""
        label = self._label(cell, result.repetition, of)
        self._write(f"{prefix}[{self.done}/{self.total}] {label}: {outcome} ({self._eta()})\n")

    def end(self) -> None:
        self._write(f"done in {format_duration(time.monotonic() - self.started)}\n")
