"""The rich side of the progress display: the bar of a run and the waiting line, on a terminal.

Imported only when the output is one (orchestrate/progress.py decides): rich takes about 90 ms to
import (measured with ``python -X importtime``), which commands writing to a file need not pay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.spinner import Spinner
from rich.text import Text

# How often the bar and the waiting spinner are redrawn: rich's default of 10 a second is more than
# a display that changes once a process ends needs; 4 a second keeps the spinner visibly alive.
REFRESH_PER_S = 4.0
# The spinner of the bar and of the waiting line (rich's default for its status line).
SPINNER = "dots"


class Bar(RichProgress):
    """The running cell's label on a line of its own (a label is longer than half a terminal), and
    under it the bar, processes done of all and the time left."""

    def get_renderables(self) -> Iterable[RenderableType]:
        for task in self.tasks:
            yield Text(task.description, no_wrap=True, overflow="ellipsis")
        yield self.make_tasks_table(self.tasks)


def console(stream: TextIO) -> Console:
    # Forced: the caller has decided this is a terminal; rich's own guesses from the environment
    # must not overrule it.
    return Console(file=stream, force_terminal=True, force_interactive=True, highlight=False)


def say(on: Console, line: str) -> None:
    """A line of the record, printed above whatever live display is shown."""
    on.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)


def start_bar(on: Console, total: int, done: int, eta: str) -> tuple[Bar, TaskID]:
    # transient: when the run ends the bar goes; the lines above it are the record.
    bar = Bar(SpinnerColumn(SPINNER), BarColumn(bar_width=None), MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
              console=on, transient=True, refresh_per_second=REFRESH_PER_S, expand=True)
    task = bar.add_task("", total=total, completed=done, eta=eta)
    bar.start()
    return bar, task


def start_waiting(on: Console, line: str) -> Live:
    live = Live(Spinner(SPINNER, Text(line)), console=on, refresh_per_second=REFRESH_PER_S)
    live.start(refresh=True)
    return live


def show_waiting(live: Live, line: str) -> None:
    live.update(Spinner(SPINNER, Text(line)), refresh=True)


def stop_waiting(live: Live, line: str) -> None:
    """The last waiting line stays on screen, without its spinner."""
    live.update(Text(line))
    live.stop()
