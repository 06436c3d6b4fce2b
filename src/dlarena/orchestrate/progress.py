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
        self.started = 0.0

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def begin(self, run_id: str, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self._write(f"run {run_id}: {total} cells\n")

    def _eta(self) -> str:
        if self.done == 0:
            return "estimating"
        per_cell = (time.monotonic() - self.started) / self.done
        return f"about {format_duration(per_cell * (self.total - self.done))} left"

    def start(self, cell: Cell) -> None:
        if self.live:
            self._write(f"\r\x1b[K[{self.done + 1}/{self.total}] {cell.label()} ... ({self._eta()})")

    def finish(self, cell: Cell, result: StoredResult) -> None:
        self.done += 1
        if result.summary is not None:
            outcome = f"ok, median {format_seconds(result.summary.median_s)} per step"
        else:
            outcome = f"{result.status}: {result.message}"
        prefix = "\r\x1b[K" if self.live else ""
        self._write(f"{prefix}[{self.done}/{self.total}] {cell.label()}: {outcome} ({self._eta()})\n")

    def end(self) -> None:
        self._write(f"done in {format_duration(time.monotonic() - self.started)}\n")
