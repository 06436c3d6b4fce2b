"""Repetitions by need: how many worker processes a timing cell gets, and how many steps each measures.

A cell first runs its pilot (the suite's ``repetitions``). Then, round after round (interleaved with
the other cells, as the pilot was), it gets one more process while the 95% interval of its median is
wider than the target half-width (``target_ci``, a share of the median) and its budget
(``max_processes``) is not spent. ``decide`` is that stopping rule, a pure function of the interval:
the wider of the cell's bootstrap interval and Student's t on its processes' medians
(``process_half_width``), since a few processes that happen to agree fool a bootstrap.
A run may also have a time budget (``time_budget_s``): past it, no cell starts a process beyond its
pilot.

Kalibera and Jones (2013, "Rigorous benchmarking in reasonable time", section 4) split the effort of
a two-level experiment (processes, and steps within a process) by the variance at each level: with
T1 the variance of one step time, T2 the variance a new process adds to its mean, c1 the cost of a
step and c2 the cost of a new process (interpreter, import, build, first step, warm-up), the most
precise use of time measures

    r1 = ceil(sqrt((c2 / c1) * (T1 / T2)))

steps per process. ``kalibera_jones`` estimates T1, T2, c1 and c2 from the pilot's processes and
gives r1, with the processes that would bring the interval to the target at r1 steps each. A
process that is expensive to start and a machine whose speed wanders little within a process call
for long processes; a machine whose speed wanders between processes calls for more of them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats  # type: ignore[import-untyped]

# The half-width of the 95% interval of a cell's median at which it has processes enough, as a share
# of the median: 3% keeps the interval of a ratio of two such cells near the 5% minimum effect a
# verdict needs (measure/compare.MIN_EFFECT), so a real 10% difference is seen.
DEFAULT_TARGET_CI = 0.03
# The most processes a timing cell gets, the pilot included: each costs seconds of interpreter and
# framework import, and the quick suite must fit in 10 minutes (issue 4).
DEFAULT_MAX_PROCESSES = 6
# Slow-spell re-measurement (measure/canary.py): at most this many extra processes per cell, so that a
# machine that is slow for good does not make a run endless.
MAX_REMEASURES = 2
# The normal quantile of a two-sided 95% interval (Kalibera and Jones' z).
Z_95 = 1.96
# The steps a process measures are never fewer than the suite's, and the time they take is held under
# this: Kalibera and Jones' r1 grows without bound when processes barely differ, but a process that
# steps for minutes would meet the machine's slow spells (a minute long) inside it.
MAX_STEPS_TIME_S = 3.0

TARGET_REACHED = "target"  # the interval is within the target
BUDGET_SPENT = "budget"  # max_processes ran and the interval is still wider
TIME_SPENT = "time"  # the run's time budget would have been passed by the next process
FIXED = "fixed"  # no target (``--target-ci 0``) or not a timing cell: the planned count ran
WHY = (TARGET_REACHED, BUDGET_SPENT, TIME_SPENT, FIXED)


@dataclass(frozen=True)
class Need:
    """What a run asks of each timing cell's processes."""

    target_ci: float = DEFAULT_TARGET_CI  # 0: a fixed count of processes, the pilot's
    max_processes: int = DEFAULT_MAX_PROCESSES
    # No process beyond a cell's pilot starts if, at the cell's mean process time, it would end past
    # this many seconds of the run (None: no limit): a suite with a promised duration keeps it.
    time_budget_s: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.target_ci > 0


def half_width(median_s: float, ci_low_s: float | None, ci_high_s: float | None) -> float | None:
    """The interval's half-width as a share of the median (None without an interval)."""
    if ci_low_s is None or ci_high_s is None or median_s <= 0:
        return None
    return (ci_high_s - ci_low_s) / 2 / median_s


def process_half_width(process_medians: Sequence[float]) -> float | None:
    """The 95% half-width of the mean of the processes' medians, Student's t on their spread, as a
    share of that mean (Kalibera and Jones' interval at the level of processes); None under two.

    The bootstrap interval a cell reports resamples processes, and from two or three of them it has
    only a handful of draws: two processes that happen to agree give it a narrow interval whatever the
    machine's spread. Student's t with n - 1 degrees of freedom (12.7 for two processes) says how
    little a few processes know, so a cell stops on the wider of the two."""
    if len(process_medians) < 2:
        return None
    mean = statistics.fmean(process_medians)
    if mean <= 0:
        return None
    count = len(process_medians)
    quantile = float(scipy_stats.t.ppf(0.975, count - 1))
    return quantile * statistics.stdev(process_medians) / math.sqrt(count) / mean


def decide(width: float | None, processes: int, pilot: int, need: Need) -> str | None:
    """Why a cell with ``processes`` ok processes (``pilot`` planned) needs no more, or None for one more."""
    if not need.adaptive:
        return FIXED if processes >= pilot else None
    if processes < pilot:
        return None
    if width is not None and width <= need.target_ci:
        return TARGET_REACHED
    if processes >= need.max_processes:
        return BUDGET_SPENT
    return None


@dataclass(frozen=True)
class Split:
    """Kalibera and Jones' estimates from a pilot and what they recommend."""

    step_variance: float  # T1, seconds squared
    process_variance: float  # T2, seconds squared (0: the processes differ no more than their steps say)
    step_cost_s: float  # c1
    process_cost_s: float  # c2
    steps_per_process: int  # r1, bounded as MAX_STEPS_TIME_S says
    processes_for_target: int | None  # at r1 steps each, for the target half-width (None: no target)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"step_variance": self.step_variance, "process_variance": self.process_variance,
                "step_cost_s": self.step_cost_s, "process_cost_s": self.process_cost_s,
                "steps_per_process": self.steps_per_process, "processes_for_target": self.processes_for_target}


def kalibera_jones(
    groups: Sequence[Sequence[float]], process_costs_s: Sequence[float], target_ci: float, min_steps: int,
) -> Split | None:
    """The split of effort from a pilot: ``groups`` each process's steady step times, ``process_costs_s``
    each process's cost besides them. None with fewer than two processes of two steps each."""
    usable = [list(group) for group in groups if len(group) >= 2]
    if len(usable) < 2 or not process_costs_s:
        return None
    means = [statistics.fmean(group) for group in usable]
    steps = statistics.fmean(len(group) for group in usable)
    step_variance = statistics.fmean(statistics.variance(group) for group in usable)  # T1
    # The variance of process means holds T2 plus T1 / steps (Kalibera and Jones' S2^2).
    process_variance = max(0.0, statistics.variance(means) - step_variance / steps)  # T2
    step_cost = statistics.median(value for group in usable for value in group)  # c1
    process_cost = max(statistics.median(process_costs_s), step_cost)  # c2
    most = max(min_steps, math.floor(MAX_STEPS_TIME_S / step_cost)) if step_cost > 0 else min_steps
    if process_variance > 0 and step_cost > 0:
        optimum = math.ceil(math.sqrt(process_cost / step_cost * step_variance / process_variance))
    else:
        optimum = most  # the processes differ no more than their steps: long processes are cheapest
    steps_per_process = min(max(optimum, min_steps), most)
    mean = statistics.fmean(means)
    processes = None
    if target_ci > 0 and mean > 0:
        variance_of_mean_per_process = process_variance + step_variance / steps_per_process
        processes = max(1, math.ceil(Z_95 ** 2 * variance_of_mean_per_process / (target_ci * mean) ** 2))
    return Split(step_variance, process_variance, step_cost, process_cost, steps_per_process, processes)
