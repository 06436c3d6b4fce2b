"""The progress display as a user sees it: a rich bar on a real pseudo-terminal, and today's plain
lines, without one escape code, where the output is a file or a pipe (CI logs)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlarena.orchestrate.progress import Progress
from dlarena.plan.cell import Cell
from dlarena.store.database import StoredResult

# Bound on waiting for a state (text on the terminal, a run ending): only reached when a test fails.
STATE_WAIT_S = 120.0
# How often a waiting test looks at what the terminal received.
POLL_S = 0.02
# The pseudo-terminal's size: wide enough that the bar's line (spinner, bar, k/N, estimate) is whole.
COLUMNS, LINES = 100, 40
# CSI sequences (colours, cursor moves, erase line, cursor show/hide): what a terminal interprets.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The line of the bar: rich draws its bar with this character.
BAR_CHARACTER = "━"

HOLDER = {"run_id": "20260101-000000-beef", "pid": 4242, "since": "2026-01-01T00:00:00"}
FIRST = Cell("fault-none", "fcn5-small", "train", batch_size=4, threads=1)
SECOND = Cell("fault-raise", "fcn5-small", "train", batch_size=4, threads=1)


def _ok(repetition: int = 0) -> StoredResult:
    return StoredResult("ok", "", "", [], 0, 1.0, "", "", {}, repetition)


FAILED = StoredResult("failed", "RuntimeError: injected", "", [], 1, 1.0, "", "", {}, 0)


class Terminal:
    """A pseudo-terminal. Its slave side is a real tty for the code under test; a thread drains the
    master side into ``received`` (a full pty buffer, about 4 KiB, would block the writer)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every slave side is closed
                return
            if not chunk:
                return
            with self._lock:
                self._chunks.append(chunk)

    def stream(self) -> io.TextIOWrapper:
        """A text stream on the slave side, as sys.stderr is on a terminal (its own fd: closing it
        leaves ``self.slave`` open)."""
        return os.fdopen(os.dup(self.slave), "w", encoding="utf-8")

    def raw(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", errors="replace")

    def text(self) -> str:
        """What was received without its escape codes, with the terminal's \\r\\n made \\n."""
        return ANSI.sub("", self.raw()).replace("\r\n", "\n")

    def wait_for(self, *parts: str, wrapped: bool = False) -> str:
        """Wait for a state, not for a time: return the text once every part has arrived.
        ``wrapped``: look in the text with its line breaks made spaces (a long line wrapped by rich)."""
        deadline = time.monotonic() + STATE_WAIT_S
        while not all(part in (text := " ".join(self.text().split()) if wrapped else self.text()) for part in parts):
            missing = [part for part in parts if part not in text]
            assert time.monotonic() < deadline, f"{missing} not on the terminal within {STATE_WAIT_S} s:\n{text}"
            time.sleep(POLL_S)
        return text

    def close(self) -> None:
        os.close(self.slave)
        self._reader.join(timeout=STATE_WAIT_S)
        os.close(self.master)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Terminal]:
    # rich sizes its output by the standard streams, which pytest captures: COLUMNS tells it the
    # pty's width. TERM: a CI runner may say "dumb", on which rich draws no live display.
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    monkeypatch.setenv("TERM", "xterm-256color")
    opened = Terminal()
    yield opened
    opened.close()


def _reap(pidfile: Path) -> None:
    """The gate cell's child (a ``sleep``) outlives a cell that ends well: the test ends it."""
    for pid in pidfile.read_text().split() if pidfile.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _bar_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if BAR_CHARACTER in line]


def test_the_bar_shows_the_running_cell_processes_done_and_the_time_left(terminal: Terminal) -> None:
    stream = terminal.stream()
    assert stream.isatty()
    progress = Progress(stream=stream)
    assert progress.live
    progress.begin("r1", cells=2, repetitions=1)
    progress.start(FIRST)
    text = terminal.wait_for("run r1: 2 cells x 1 process\n", FIRST.label(), "0/2", "estimating")
    assert any("0/2" in line and "estimating" in line for line in _bar_lines(text))

    progress.finish(FIRST, _ok(), median_s=0.001)
    finished = f"[1/2] {FIRST.label()}: ok, median 1 ms per step (about "
    text = terminal.wait_for(finished)
    assert re.search(re.escape(finished) + r"\d+ s left\)\n", text)  # a whole line in the scrollback

    progress.start(SECOND)
    text = terminal.wait_for(SECOND.label())
    after = text[text.index(finished):]
    assert SECOND.label() in after  # the bar's label is the running cell's
    # the bar: one process of two done, and the time left, the same estimate as the lines give
    assert any(re.search(r"1/2 about \d+ s left", line) for line in _bar_lines(after)), after

    progress.finish(SECOND, FAILED)
    progress.end()
    text = terminal.wait_for(f"[2/2] {SECOND.label()}: failed: RuntimeError: injected (about 0 s left)\n",
                             "done in ")
    raw = terminal.raw()
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # the cursor is given back
    # the bar is gone at the end: nothing after the last finished line but "done in"
    assert text.rstrip("\n").splitlines()[-1].startswith("done in ")
    stream.close()


def test_the_waiting_line_is_shown_and_rewritten_on_a_terminal(terminal: Terminal) -> None:
    stream = terminal.stream()
    progress = Progress(stream=stream)
    progress.waiting(HOLDER, 5.0)
    terminal.wait_for("waiting 5 s for run 20260101-000000-beef (pid 4242")
    progress.waiting(HOLDER, 75.0)
    terminal.wait_for("waiting 1 min 15 s for run 20260101-000000-beef", "(Ctrl-C to give up)")
    progress.begin("r2", cells=1, repetitions=1)  # the wait is over: the run's first line follows it
    text = terminal.wait_for("run r2: 1 cell x 1 process\n")
    assert text.index("waiting 1 min 15 s") < text.index("run r2:")
    progress.close()
    raw = terminal.raw()
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")
    stream.close()


def test_an_interrupted_run_leaves_the_cut_cell_in_view(terminal: Terminal) -> None:
    stream = terminal.stream()
    progress = Progress(stream=stream)
    progress.begin("r3", cells=1, repetitions=1)
    progress.start(FIRST)
    terminal.wait_for(FIRST.label(), "0/1")
    progress.end(interrupted=True)
    text = terminal.wait_for("stopped after ")
    tail = text[text.rindex(BAR_CHARACTER):]
    assert tail.count("\n") >= 1 and "stopped after" in tail.splitlines()[-1]
    assert FIRST.label() in text[text.rindex("run r3"):]
    stream.close()


def test_a_dumb_terminal_gets_the_plain_lines(terminal: Terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tty that cannot move its cursor (Emacs' shell): lines only, no bar, no escape codes."""
    monkeypatch.setenv("TERM", "dumb")
    stream = terminal.stream()
    progress = Progress(stream=stream)
    assert not progress.live
    progress.begin("r4", cells=1, repetitions=1)
    progress.start(FIRST)
    progress.finish(FIRST, _ok(), 0.001)
    progress.end()
    terminal.wait_for("done in ")
    assert "\x1b" not in terminal.raw() and BAR_CHARACTER not in terminal.raw()
    stream.close()


def _script(progress: Progress) -> None:
    progress.waiting(HOLDER, 0.0)
    progress.waiting(HOLDER, 30.0)  # not logged: under WAIT_LOG_S since the last line
    progress.begin("r1", cells=2, repetitions=2, already_done=1)
    progress.note("peak at 1 thread: 1.0 GFLOP/s float32 (test)")
    progress.start(FIRST, 0, 2)
    progress.finish(FIRST, _ok(), 0.001, 2)
    progress.start(SECOND, 0, 2)
    progress.finish(SECOND, FAILED, None, 2)
    progress.skip(1)
    progress.start(FIRST, 1, 2)
    progress.finish(FIRST, _ok(1), 0.002, 2)
    progress.end()


# What the display wrote before the bar existed (git HEAD's progress.py, same events, same clock).
PLAIN = (
    "waiting 0 s for run 20260101-000000-beef (pid 4242, database ?, since 2026-01-01T00:00:00)"
    " to finish measuring on this machine (Ctrl-C to give up)\n"
    "run r1: 2 cells x 2 processes, 1 process stored before\n"
    "peak at 1 thread: 1.0 GFLOP/s float32 (test)\n"
    "[1/3] fault-none fcn5-small train cpu batch 4 threads 1 (process 1/2): ok, median 1 ms per step"
    " (about 20 s left)\n"
    "[2/3] fault-raise fcn5-small train cpu batch 4 threads 1 (process 1/2): failed: RuntimeError: injected"
    " (about 10 s left)\n"
    "[3/2] fault-none fcn5-small train cpu batch 4 threads 1 (process 2/2): ok, median 2 ms per step"
    " (about 0 s left)\n"
    "done in 40 s\n"
)


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_off_a_terminal_the_lines_are_plain_and_unchanged(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log file or a pipe gets the same bytes as before the bar: one line per event, no escapes."""
    ticks = itertools.count(0.0, 10.0)  # each reading of the clock 10 s after the last: a fixed estimate
    monkeypatch.setattr(time, "monotonic", lambda: next(ticks))
    monkeypatch.setenv("TERM", "xterm-256color")  # a terminal type is no terminal: the stream decides
    if kind == "file":
        path = tmp_path / "run.log"
        with open(path, "w", encoding="utf-8") as stream:
            progress = Progress(stream=stream)
            _script(progress)
        received = path.read_text(encoding="utf-8")
    else:
        read_end, write_end = os.pipe()
        with os.fdopen(write_end, "w", encoding="utf-8") as stream:
            progress = Progress(stream=stream)
            _script(progress)
        with os.fdopen(read_end, encoding="utf-8") as reader:
            received = reader.read()
    assert not progress.live
    assert "\x1b" not in received and "\r" not in received
    assert received == PLAIN


def test_dlarena_run_on_a_terminal_shows_the_bar_while_a_cell_runs(
    terminal: Terminal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command on a pty: the bar is on screen while the cell is held running at its gate."""
    pidfile, gate = tmp_path / "children.txt", tmp_path / "gate"
    env = {**os.environ, "DLARENA_FAULT_GATE": str(gate), "DLARENA_FAULT_PIDFILE": str(pidfile)}
    run = subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--frameworks", "fault-gate", "--workloads", "fcn5-small",
         "--scenarios", "train", "--batch-sizes", "4", "--threads", "1", "--repetitions", "1", "--target-ci", "0",
         "--db", str(tmp_path / "r.db")],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=terminal.slave, stderr=terminal.slave,
    )
    label = "fault-gate fcn5-small train cpu batch 4 threads 1"
    try:
        text = terminal.wait_for(label, "0/1", "estimating")  # the cell is running: the gate is shut
        assert run.poll() is None and not gate.exists()
        assert any("0/1 estimating" in line for line in _bar_lines(text))
        gate.touch()
        assert run.wait(timeout=STATE_WAIT_S) == 0, terminal.text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        _reap(pidfile)
    text = terminal.wait_for(f"[1/1] {label}: ok, median ", "done in ", "finished in")
    raw = terminal.raw()
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # the cursor is given back


def _run_id(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        (run_id,) = connection.execute("SELECT id FROM runs").fetchone()
    return str(run_id)


def test_dlarena_run_waiting_for_another_run_shows_the_waiting_line_on_a_terminal(
    terminal: Terminal, tmp_path: Path
) -> None:
    """A second run on a pty waits for one held at its gate: the waiting line is on screen until the
    first ends, then the second's own lines and bar follow it."""
    pidfile, gate = tmp_path / "children.txt", tmp_path / "gate"
    env = {**os.environ, "DLARENA_FAULT_GATE": str(gate), "DLARENA_FAULT_PIDFILE": str(pidfile)}
    args = ["--workloads", "fcn5-small", "--scenarios", "train", "--batch-sizes", "4", "--threads", "1",
            "--repetitions", "1", "--target-ci", "0"]
    command = [sys.executable, "-m", "dlarena.cli", "run"]
    first = subprocess.Popen([*command, "--frameworks", "fault-gate", *args, "--db", str(tmp_path / "first.db"),
                              "--quiet"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        deadline = time.monotonic() + STATE_WAIT_S
        while not pidfile.exists():  # the first run holds the machine and its cell is running
            assert first.poll() is None and time.monotonic() < deadline, "the gate cell did not start"
            time.sleep(POLL_S)
        second = subprocess.Popen([*command, "--frameworks", "fault-none", *args, "--db", str(tmp_path / "second.db")],
                                  cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=terminal.slave,
                                  stderr=terminal.slave)
        text = terminal.wait_for(f"waiting 0 s for run {_run_id(tmp_path / 'first.db')} (pid {first.pid},",
                                 "to finish measuring on this machine (Ctrl-C to give up)", wrapped=True)
        assert second.poll() is None and "run " not in text[:text.index("waiting")]  # it has not begun
        gate.touch()
        assert first.wait(timeout=STATE_WAIT_S) == 0
        assert second.wait(timeout=STATE_WAIT_S) == 0, terminal.text()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        _reap(pidfile)
    text = terminal.wait_for("[1/1] fault-none fcn5-small train cpu batch 4 threads 1: ok, median ", "done in ")
    assert text.index("waiting ") < text.index("[1/1] fault-none")
    raw = terminal.raw()
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # the cursor is given back
