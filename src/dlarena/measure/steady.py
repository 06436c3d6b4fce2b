"""Where a process's step times settle: steady state by detection, not by a fixed warm-up count.

Following Barrett et al. (2017, "Virtual machine warmup blows hot and cold"), each process's series of
step times is cut into segments by PELT changepoint detection on a change in mean and variance (their
R ``cpt.meanvar``; here ruptures' ``normal`` cost, on block medians, with a penalty measured below);
neighbouring segments whose means are within STEADY_TOLERANCE of each other are one level. The last
segment is the steady state, and the process is classed:

- ``flat``: one level throughout;
- ``warmup``: the steady level is the fastest (earlier levels were slower: a JIT, caches, allocators);
- ``slowdown``: an earlier level was faster than the steady one;
- ``no steady state``: the last level began too late to call it steady (a framework that keeps
  recompiling): said, never averaged.

Statistics use the steady segment only (``Steady.samples``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FLAT = "flat"
WARMUP = "warmup"
SLOWDOWN = "slowdown"
NO_STEADY_STATE = "no steady state"
CLASSES = (FLAT, WARMUP, SLOWDOWN, NO_STEADY_STATE)

# The penalty of a changepoint, times log n. Barrett et al. used 15 log n on 2,000 iterations; on the
# 50 block medians PELT sees here it misses real changes (measured on the synthetic series of
# tests/test_steady_state.py, 4% noise: a 15% slowdown after 100 of 200 steps went unseen in 20 of 20
# draws, a 20%-a-step staircase in 30 of 30). At 2.5 log n both were found every time, and no flat
# series was cut into levels STEADY_TOLERANCE apart (0 of 360 with 5% and 10% noise, 1 of 180 with
# 20%): merging levels within the tolerance keeps noise's extra cuts from mattering.
PENALTY_PER_LOG_N = 2.5
# The shortest segment: a single slow step (a garbage collection, a page fault) is an outlier of a
# segment, not a segment of its own.
MIN_SEGMENT_STEPS = 5
# Levels whose means differ by less than this share of the steady level are one level: 5% is the
# smallest difference a verdict calls real (the minimum effect of issue 17), so a shift smaller than
# it cannot change a verdict, and the machine's own drift between windows is of that order.
STEADY_TOLERANCE = 0.05
# The steady level must hold at least this share of the series: Barrett et al. call a process without
# a steady state when a changepoint falls in the last 500 of its 2,000 iterations (25%).
MIN_STEADY_SHARE = 0.25
# Fewer steps than this cannot show a changepoint and a steady segment each of MIN_SEGMENT_STEPS: the
# series is taken as flat (a long step measured a few times has no warm-up left to find).
MIN_CLASSIFIED_STEPS = 2 * MIN_SEGMENT_STEPS
# The most points PELT is given: a longer series is cut into blocks of consecutive steps, each one
# point (its median). 50 points resolve a warm-up to 2% of the series.
MAX_POINTS = 50


@dataclass(frozen=True)
class Steady:
    steady_class: str  # one of CLASSES
    start: int  # the index of the steady segment's first step
    levels: tuple[float, ...]  # each level's mean, in order
    samples: tuple[float, ...]  # the steady segment's step times

    @property
    def steps_dropped(self) -> int:
        return self.start


def _segments(series: np.ndarray) -> list[int]:
    """PELT's breakpoints (each segment's end index into ``series``; the last is len(series)), found on
    the medians of consecutive blocks of steps, at most MAX_POINTS of them: the median keeps a lone slow
    step out of a block, and PELT's cost grows with the square of the points in the worst case
    (measured: 190 s for 2,000 steps one by one)."""
    import ruptures

    block = max(1, math.ceil(len(series) / MAX_POINTS))
    points = np.array([np.median(series[start:start + block]) for start in range(0, len(series), block)])
    with warnings.catch_warnings():  # ruptures announces, at every fit, a bias it adds to constant segments
        warnings.simplefilter("ignore", UserWarning)
        detector = ruptures.Pelt(model="normal", min_size=max(2, math.ceil(MIN_SEGMENT_STEPS / block)), jump=1)
        ends: list[int] = detector.fit(points.reshape(-1, 1)).predict(pen=PENALTY_PER_LOG_N * math.log(len(points)))
    return [min(end * block, len(series)) for end in ends]


def _levels(series: np.ndarray, ends: list[int]) -> list[tuple[int, int, float]]:
    """Segments as (start, end, mean), neighbours within STEADY_TOLERANCE of each other merged."""
    levels: list[tuple[int, int, float]] = []
    start = 0
    for end in ends:
        mean = float(series[start:end].mean())
        if levels and abs(mean - levels[-1][2]) <= STEADY_TOLERANCE * min(mean, levels[-1][2]):
            first = levels[-1][0]
            levels[-1] = (first, end, float(series[first:end].mean()))
        else:
            levels.append((start, end, mean))
        start = end
    return levels


def classify(samples: Sequence[float]) -> Steady:
    """The process's steady-state class and its steady segment."""
    series = np.asarray(samples, dtype=np.float64)
    if len(series) < MIN_CLASSIFIED_STEPS:
        return Steady(FLAT, 0, (float(series.mean()),) if len(series) else (), tuple(series.tolist()))
    levels = _levels(series, _segments(series))
    start, _, steady = levels[-1]
    means = tuple(level[2] for level in levels)
    if len(levels) == 1:
        steady_class = FLAT
    elif len(series) - start < MIN_STEADY_SHARE * len(series):
        steady_class = NO_STEADY_STATE
    elif any(mean < steady * (1 - STEADY_TOLERANCE) for mean in means[:-1]):
        steady_class = SLOWDOWN
    else:
        steady_class = WARMUP
    return Steady(steady_class, start, means, tuple(series[start:].tolist()))


def used(steadies: Sequence[Steady]) -> list[Steady]:
    """The processes a cell's figures rest on: those that reached a steady state, or all of them when
    none did (their last levels, with a warning: aggregate.py)."""
    return [steady for steady in steadies if steady.steady_class != NO_STEADY_STATE] or list(steadies)


def steady_groups(processes: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each used process's steady segment: the samples every figure of a cell is computed from (its
    summary, its ranking, its comparisons), so that they all agree."""
    return [list(steady.samples) for steady in used([classify(samples) for samples in processes])]
