"""The timed loop: warm up, then step until both a minimum count and a minimum duration are reached.

Stdlib only: this runs inside the worker next to the framework, and must not add work to a step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from dlarena.plan.cell import Measurement

Clock = Callable[[], float]


@dataclass
class Timings:
    first_step_s: float = 0.0  # the first call: compilation, JIT, tracing, allocator growth
    warmup_s: list[float] = field(default_factory=list)
    samples_s: list[float] = field(default_factory=list)  # steady state, one per step
    loop_wall_s: float = 0.0
    loop_cpu_s: float = 0.0  # process CPU time (all threads) during the steady-state loop

    @property
    def cores_used(self) -> float:
        """Average number of cores busy during the steady state (CPU time over wall time)."""
        return self.loop_cpu_s / self.loop_wall_s if self.loop_wall_s > 0 else 0.0


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run_timed(
    step: Callable[[], None],
    sync: Callable[[], None],
    settings: Measurement,
    clock: Clock = time.perf_counter,
    steady: AbstractContextManager[Any] | None = None,
) -> Timings:
    """Time ``step`` as ``settings`` says, reading the clock only after ``sync``.

    ``steady`` is entered around the steady-state loop alone (a resource sampler).
    """
    timings = Timings()
    sync()
    start = clock()
    step()
    sync()
    timings.first_step_s = clock() - start

    for _ in range(settings.warmup_steps):
        start = clock()
        step()
        sync()
        timings.warmup_s.append(clock() - start)

    samples = timings.samples_s
    with steady or nullcontext():
        cpu_start, loop_start = _cpu_seconds(), clock()
        elapsed = 0.0
        while len(samples) < settings.max_steps:
            start = clock()
            step()
            sync()
            end = clock()
            samples.append(end - start)
            elapsed = end - loop_start
            enough = len(samples) >= settings.min_steps and elapsed >= settings.min_time_s
            if enough or (len(samples) >= settings.min_steps and elapsed >= settings.max_time_s):
                break
        timings.loop_wall_s = elapsed
        timings.loop_cpu_s = _cpu_seconds() - cpu_start
    return timings
