"""Summaries of step times measured in several worker processes, and their stability.

A cell is measured by k processes, each of which times many steps. Steps of one process share
its memory layout, its thread placement and its compilation, so they vary less than processes do;
the confidence interval therefore resamples processes first and steps within them (a hierarchical
bootstrap), and the stability check looks at the spread between processes as well as within.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# A 95% interval, as is usual; 2,000 resamples put the Monte Carlo error of its 2.5% and 97.5%
# percentiles well below the interval's width (Efron & Tibshirani, "An Introduction to the
# Bootstrap", 1993, ch. 19: 1,000 or more for percentile intervals).
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2_000
# Fixed, so that summarising the same samples twice gives the same interval.
BOOTSTRAP_SEED = 0
# pyperf's `check` warns when the standard deviation exceeds 10% of the mean; we apply the same
# threshold to the robust spread, the interquartile range over the median.
UNSTABLE_IQR_FRACTION = 0.10
# Process medians further apart than this: the run-to-run agreement dlarena aims for (issue 4: two
# runs of the quick suite within 5%), so a cell worse than that within one run is flagged.
UNSTABLE_PROCESS_SPREAD = 0.05
# Percentiles of the step time reported as latencies for inference: the median, then the tail.
LATENCY_PERCENTILES = (50, 90, 99)
# A tail percentile is given only where at least this many steady steps lie beyond it: with fewer, one
# stray step (a page fault, a timer tick, another process) is the figure (the 99th percentile of 100
# steps is their second slowest). So p90 needs 100 steps and p99 1,000 (steps_for_percentile).
TAIL_OBSERVATIONS = 10


def steps_for_percentile(percentile: float) -> int:
    """The fewest steady steps that leave TAIL_OBSERVATIONS beyond ``percentile``: 100 for 90, 1,000 for 99."""
    return round(TAIL_OBSERVATIONS * 100 / (100 - percentile))


@dataclass(frozen=True)
class Summary:
    """Step times of one cell, pooled over its processes, with a confidence interval of the median."""

    n: int  # steady-state steps, all processes together
    processes: int
    median_s: float
    mean_s: float
    stdev_s: float
    min_s: float
    max_s: float
    q1_s: float
    q3_s: float
    ci_low_s: float
    ci_high_s: float
    p50_s: float
    p90_s: float | None  # None: fewer steady steps than steps_for_percentile(90)
    p99_s: float | None
    process_medians_s: tuple[float, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    @property
    def process_spread(self) -> float:
        """Largest process median over the smallest, minus one (0 with one process)."""
        if len(self.process_medians_s) < 2 or min(self.process_medians_s) <= 0:
            return 0.0
        return max(self.process_medians_s) / min(self.process_medians_s) - 1.0

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median step time."""
        return batch_size / self.median_s if self.median_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "iqr_s": self.iqr_s, "process_spread": self.process_spread}


def _groups(samples: Sequence[float] | Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Per-process arrays; a flat sequence is one process."""
    if samples and not isinstance(samples[0], int | float):
        groups = [np.asarray(group, dtype=np.float64) for group in samples]
    else:
        groups = [np.asarray(samples, dtype=np.float64)]
    return [group for group in groups if group.size]


def bootstrap_medians(
    groups: Sequence[np.ndarray], rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES,
) -> np.ndarray:
    """Medians of ``resamples`` hierarchical resamples: processes with replacement, then steps within each."""
    medians = np.empty(resamples)
    count = len(groups)
    for index in range(resamples):
        chosen = rng.integers(0, count, size=count)
        pooled = np.concatenate([groups[i][rng.integers(0, groups[i].size, size=groups[i].size)] for i in chosen])
        medians[index] = np.median(pooled)
    return medians


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def stability_warnings(median: float, iqr: float, process_medians: Sequence[float]) -> tuple[str, ...]:
    """What is wrong with a cell's spread, each with what to do about it.

    A warning holds no "; ": the export joins a cell's warnings with it (report/export.py).
    """
    warnings = []
    if median > 0 and iqr / median > UNSTABLE_IQR_FRACTION:
        warnings.append(
            f"unstable: the interquartile range is {iqr / median:.0%} of the median (threshold"
            f" {UNSTABLE_IQR_FRACTION:.0%}). Stop other programs, leave a core free for the system, or raise"
            " min_time_s"
        )
    if len(process_medians) > 1 and min(process_medians) > 0:
        spread = max(process_medians) / min(process_medians) - 1.0
        if spread > UNSTABLE_PROCESS_SPREAD:
            warnings.append(
                f"unstable: the medians of the {len(process_medians)} processes differ by {spread:.0%} (threshold"
                f" {UNSTABLE_PROCESS_SPREAD:.0%}). The machine changed between processes (load, frequency, memory):"
                " re-run on an idle machine or raise --repetitions"
            )
    return tuple(warnings)


def summarise(samples: Sequence[float] | Sequence[Sequence[float]], seed: int = BOOTSTRAP_SEED) -> Summary:
    """Summarise steady-state step times: a flat list (one process) or one list per process."""
    groups = _groups(samples)
    if not groups:
        raise ValueError("no samples to summarise")
    values = np.concatenate(groups)
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    p90, p99 = (float(np.percentile(values, percentile)) if values.size >= steps_for_percentile(percentile) else None
                for percentile in LATENCY_PERCENTILES[1:])
    low, high = percentile_interval(bootstrap_medians(groups, np.random.default_rng(seed)))
    process_medians = tuple(float(np.median(group)) for group in groups)
    return Summary(
        n=int(values.size),
        processes=len(groups),
        median_s=median,
        mean_s=float(values.mean()),
        stdev_s=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min_s=float(values.min()),
        max_s=float(values.max()),
        q1_s=q1,
        q3_s=q3,
        ci_low_s=low,
        ci_high_s=high,
        p50_s=median,
        p90_s=p90,
        p99_s=p99,
        process_medians_s=process_medians,
        warnings=stability_warnings(median, q3 - q1, process_medians),
    )
