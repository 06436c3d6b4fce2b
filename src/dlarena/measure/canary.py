"""A canary for the machine: fixed work with no framework, timed between worker processes, so that a
run knows the machine's speed over time and which processes ran in a slow spell.

The kernel is benchmarks/machine_noise.py's pure-Python loop (the interpreter's speed, as in a
framework's per-step overhead), timed on the first allowed core, where a one-thread worker runs, for
CANARY_WINDOW_S; a reading is the median kernel time of the window. A process is in a slow spell when
the readings on *both* sides of it are slower than the run's typical reading (their median so far)
by more than SLOW_SPELL_THRESHOLD: one slow window is the machine's ordinary noise, a slow window on
each side means the spell lasted through the process.

The decision (``judge``) is a pure function of readings, so that it is tested without a clock.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# machine_noise.py's interpreter kernel: a loop of this many additions takes about 0.1 ms, so a
# window holds thousands of them and its median is steady to well under 1% on an idle core.
PYTHON_LOOP_LENGTH = 2_000
# One reading: long enough for a stable median, short against a worker process (seconds), so that the
# canary adds under a tenth to a quick-suite run's time (two readings bracket each process, one shared).
CANARY_WINDOW_S = 0.2
# Slower than typical by more than this on both sides of a process: a slow spell. machine_noise.py
# measured window medians wandering 11-22% on this project's 2-core machine; a slow reading on both
# sides beyond 15% is past the ordinary wander of either one, and the spells it found (a minute long)
# slowed the windows by 30% and more.
SLOW_SPELL_THRESHOLD = 0.15
# The key a process's canary record carries when it ran in a slow spell and the run measured another
# process of its cell in its place: its figures then leave it out.
MEASURED_AGAIN = "measured_again"
# Readings needed before the typical speed is trusted: with fewer, no process is judged slow.
MIN_READINGS = 3


def python_loop() -> int:
    """The kernel: the interpreter's speed, as machine_noise.py times it."""
    return sum(index * index for index in range(PYTHON_LOOP_LENGTH))


def window_median(kernel: Callable[[], object], seconds: float) -> float:
    """The median duration of ``kernel`` run again and again for ``seconds``."""
    times = []
    start = time.perf_counter()
    while True:
        begin = time.perf_counter()
        kernel()
        end = time.perf_counter()
        times.append(end - begin)
        if end - start >= seconds:
            return statistics.median(times)


def read(window_s: float = CANARY_WINDOW_S) -> float:
    """One canary reading: the loop's median time over a window, on the first allowed core."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        return window_median(python_loop, window_s)
    finally:
        os.sched_setaffinity(0, allowed)


@dataclass(frozen=True)
class Judgement:
    before_s: float
    after_s: float
    typical_s: float | None  # None: too few readings to know
    slow_spell: bool

    def as_dict(self) -> dict[str, float | bool | None]:
        return {"before_s": self.before_s, "after_s": self.after_s, "typical_s": self.typical_s,
                "slow_spell": self.slow_spell}


def judge(before_s: float, after_s: float, readings: Sequence[float]) -> Judgement:
    """Whether a process bracketed by ``before_s`` and ``after_s`` ran in a slow spell, against the
    median of all the run's ``readings`` so far (the two included)."""
    if len(readings) < MIN_READINGS:
        return Judgement(before_s, after_s, None, False)
    typical = statistics.median(readings)
    slow = min(before_s, after_s) > typical * (1 + SLOW_SPELL_THRESHOLD)
    return Judgement(before_s, after_s, typical, slow)


@dataclass
class Canary:
    """The run's readings, in order; ``bracket`` reads after a process and judges it."""

    readings: list[float] = field(default_factory=list)
    window_s: float = CANARY_WINDOW_S

    def read(self) -> float:
        reading = read(self.window_s)
        self.readings.append(reading)
        return reading

    def bracket(self, before_s: float) -> Judgement:
        """Read after a process that ``before_s`` preceded, and judge it."""
        return judge(before_s, self.read(), self.readings)


def outside_slow_spells(processes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The processes a cell's figures rest on: all but those run in a slow spell and measured again in
    their place (orchestrator._execute marks them MEASURED_AGAIN); all of them where none is left."""
    calm = [process for process in processes if not (process.get("canary") or {}).get(MEASURED_AGAIN)]
    return calm or list(processes)
