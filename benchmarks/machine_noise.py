"""How steady is this machine? Fixed work timed again and again, with no deep learning framework.

    .venv/bin/python benchmarks/machine_noise.py [--seconds 60] [--window 0.3] [--core 0] [--processes 2]

On one core (the first allowed, where a one-thread worker runs, unless ``--core``), two fixed kernels
are timed in alternating windows of ``--window`` seconds (the quick suite's ``min_time_s``) for
``--seconds`` in all: a float32 matrix product through NumPy's BLAS that fits in the core's cache
(arithmetic), and a pure-Python loop (the interpreter, as in a framework's per-step overhead). A
window's median step is what a worker measuring then would report, so the spread of the window
medians is the machine's own noise at the time scale of a measurement, which no harness can remove.

For each kernel it prints the spread of the window medians, how alike neighbouring windows are (the
lag-1 autocorrelation: near 1, the machine stays in one state for many windows), the share of time
spent in steal (the hypervisor running someone else), and the ceiling of ``benchmarks/repeatability.py``
for a perfect harness: simulated cells of ``--processes`` windows per run, two runs drawn from
windows at least ``--apart`` seconds apart, the share of cells whose two runs agree within 5%, and
how many processes per cell would reach 90%.
A real cell also varies from one process to the next (memory layout, the framework's own choices),
so real agreement is at most this. Not part of ``make test``; always exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

from dlarena.measure.canary import PYTHON_LOOP_LENGTH, python_loop, window_median  # the run's canary kernel
from dlarena_runner.process import fix_malloc_thresholds, limit_threads
from repeatability import AGREEMENT, TARGET_FRACTION  # the criterion this script gives the ceiling of

# Cache-resident work: three 256 x 256 float32 matrices are 768 KiB, inside a server core's L2.
MATRIX_SIZE = 256
# Simulated cells; enough that the share's sampling error (under 0.5%) is below the figures' precision.
SIMULATED_CELLS = 10_000
SEED = 0


def _steal_ticks() -> int:
    """Clock ticks the hypervisor gave to someone else, all CPUs (/proc/stat's 8th field)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def _autocorrelation(values: list[float]) -> float:
    mean = statistics.fmean(values)
    deviations = [value - mean for value in values]
    denominator = sum(d * d for d in deviations)
    return sum(a * b for a, b in itertools.pairwise(deviations)) / denominator if denominator else 0.0


def simulated_agreement(medians: list[float], processes: int, apart: int, cells: int, seed: int = SEED) -> float:
    """Share of simulated cells whose two runs agree within AGREEMENT.

    A run of a cell is the median of ``processes`` window medians drawn at random (dlarena's figure
    is the median of the steps of all its processes, which this approaches); the second run's
    windows are drawn at least ``apart`` windows after the first's, wrapping around the trace (runs
    happen minutes apart, and the machine's state lasts for several windows).
    """
    import numpy as np

    values = np.asarray(medians)
    count = values.size
    if count <= 2 * apart:
        raise ValueError("the trace is too short for runs that far apart: raise --seconds or lower --apart")
    chance = np.random.default_rng(seed)
    first = chance.integers(0, count, size=(cells, processes))
    # a block of the trace away from all of the first run's windows is not always there; an offset
    # from each first window keeps every pair of windows at least `apart` apart in the circular trace
    second = (first + chance.integers(apart, count - apart + 1, size=(cells, processes))) % count
    ratio = np.median(values[second], axis=1) / np.median(values[first], axis=1)
    return float(np.mean(np.abs(ratio - 1) <= AGREEMENT))


def processes_needed(medians: list[float], apart: int, cells: int, most: int = 64) -> int | None:
    """The fewest processes per cell at which simulated runs reach the target share; None past ``most``."""
    for processes in range(1, most + 1):
        if simulated_agreement(medians, processes, apart, cells) >= TARGET_FRACTION:
            return processes
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the trace (default 60)")
    parser.add_argument("--window", type=float, default=0.3, help="seconds per window (default: quick's 0.3)")
    parser.add_argument("--core", type=int, help="the core to measure (default: the first allowed)")
    parser.add_argument("--processes", type=int, default=2, help="processes per simulated cell (default: quick's 2)")
    parser.add_argument("--apart", type=float, default=10.0,
                        help="least seconds between a simulated cell's two runs (default 10)")
    args = parser.parse_args()
    # simulated_agreement needs the second run's windows at least --apart after the first's, both ways.
    if args.seconds <= 2 * args.apart:
        parser.error(f"--seconds ({args.seconds:g}) must be more than twice --apart ({args.apart:g}): the two runs"
                     " of a simulated cell are drawn that far apart in the trace")
    fix_malloc_thresholds()
    if args.core is not None:
        os.sched_setaffinity(0, [args.core])
    core = limit_threads(1)[0]  # before NumPy starts its BLAS, exactly as a one-thread worker
    import numpy as np

    matrix = np.random.default_rng(SEED).standard_normal((MATRIX_SIZE, MATRIX_SIZE), dtype=np.float32)
    product = matrix @ matrix
    kernels: dict[str, Callable[[], object]] = {
        f"float32 matmul {MATRIX_SIZE}": lambda: np.matmul(matrix, matrix, out=product),
        f"Python loop {PYTHON_LOOP_LENGTH}": python_loop,
    }
    medians: dict[str, list[float]] = {name: [] for name in kernels}
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    steal_before, started = _steal_ticks(), time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        for name, kernel in kernels.items():
            medians[name].append(window_median(kernel, args.window))
    elapsed = time.perf_counter() - started
    steal = (_steal_ticks() - steal_before) / ticks_per_second / (os.cpu_count() or 1) / elapsed
    windows_apart = max(1, round(args.apart / (args.window * len(kernels))))

    print(f"Core {core}, {elapsed:.0f} s, windows of {args.window:g} s; steal time {steal:.2%} of the CPUs.\n")
    print(f"| kernel | windows | median | spread (CV) | fastest | slowest | lag-1 autocorrelation |"
          f" cells of {args.processes} processes agreeing within {AGREEMENT:.0%} |"
          f" processes per cell for {TARGET_FRACTION:.0%} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, values in medians.items():
        centre = statistics.median(values)
        spread = statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0
        agreement = simulated_agreement(values, args.processes, windows_apart, SIMULATED_CELLS)
        print(f"| {name} | {len(values)} | {centre * 1e6:.1f} us | {spread:.1%} | {min(values) / centre - 1:+.0%} |"
              f" {max(values) / centre - 1:+.0%} | {_autocorrelation(values):.2f} | {agreement:.0%} |"
              f" {processes_needed(values, windows_apart, SIMULATED_CELLS) or 'over 64'} |")
    print(f"\nA perfect harness measuring {args.processes} processes of {args.window:g} s per cell could not do"
          f" better than the second-last column (issue 4's target: {TARGET_FRACTION:.0%} of cells); the last"
          " column is how many processes per cell it would take on this machine now.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
