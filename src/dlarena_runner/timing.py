"""The timed loop: warm up, then step until both a minimum count and a minimum duration are reached.

Stdlib only and Python 3.6+ (see the package's docstring): this runs inside the worker next to the
framework, and must not add work to a step.
"""

import time
from contextlib import ExitStack
from typing import Any, Callable, ContextManager, List, Optional

from dlarena_runner.resources import cpu_seconds

Clock = Callable[[], float]


class Timings:
    """What the loop measured, in seconds."""

    def __init__(self) -> None:
        self.first_step_s = 0.0  # the first call: compilation, JIT, tracing, allocator growth
        self.warmup_s: List[float] = []
        self.samples_s: List[float] = []  # steady state, one per step
        self.loop_wall_s = 0.0
        self.loop_cpu_s = 0.0  # process CPU time (all threads) during the steady-state loop

    @property
    def cores_used(self) -> float:
        """Average number of cores busy during the steady state (CPU time over wall time)."""
        return self.loop_cpu_s / self.loop_wall_s if self.loop_wall_s > 0 else 0.0


def run_timed(
    step: Callable[[], None],
    sync: Callable[[], None],
    settings: Any,
    clock: Clock = time.perf_counter,
    steady: Optional[ContextManager[Any]] = None,
    fixed_steps: Optional[Callable[[Timings], int]] = None,
) -> Timings:
    """Time ``step`` as ``settings`` says, reading the clock only after ``sync``.

    ``settings`` is any object with ``warmup_steps``, ``min_steps``, ``max_steps``, ``min_time_s``
    and ``max_time_s`` (the host's ``plan.cell.Measurement``, or its JSON read back in an old
    interpreter). ``steady`` is entered around the steady-state loop alone (a resource sampler).
    ``fixed_steps``, given the first and warm-up steps' times, says exactly how many steps to time
    instead of stopping when ``settings`` are met: processes stepping in lockstep (data-parallel
    replicas) must all take the same number.
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
    fixed = fixed_steps(timings) if fixed_steps is not None else None
    with ExitStack() as context:  # contextlib.nullcontext is Python 3.7+
        if steady is not None:
            context.enter_context(steady)
        cpu_start, loop_start = cpu_seconds(), clock()
        elapsed = 0.0
        while len(samples) < (settings.max_steps if fixed is None else fixed):
            start = clock()
            step()
            sync()
            end = clock()
            samples.append(end - start)
            elapsed = end - loop_start
            enough = len(samples) >= settings.min_steps and elapsed >= settings.min_time_s
            if fixed is None and (enough or (len(samples) >= settings.min_steps and elapsed >= settings.max_time_s)):
                break
        timings.loop_wall_s = elapsed
        timings.loop_cpu_s = cpu_seconds() - cpu_start
    return timings
