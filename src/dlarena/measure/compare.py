"""Is B faster than A? A verdict per cell from the step times of both, with its evidence.

The ratio is B's median step time over A's (below 1: B is faster), with a hierarchical bootstrap
interval (stats.bootstrap_medians: processes resampled, then steps within them, so that the variation
between processes is in it). The verdict comes from that interval alone: B is faster when the whole
interval lies below 1 - MIN_EFFECT, slower when it lies above 1 + MIN_EFFECT, and otherwise the same.
The Mann-Whitney U p-value (SciPy) is shown but does not decide: with thousands of steps it finds
differences far too small to matter. With fewer than MIN_PROCESSES worker processes on a side there
is no verdict: it is withheld.

`rank` orders any number of sides (frameworks) by their median and compares each with one baseline
(the fastest unless one is named) through the same verdict.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats  # type: ignore[import-untyped]

from dlarena.measure.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_medians, percentile_interval
from dlarena.wording import counted

# The smallest difference a verdict claims, and which the ratio's whole interval must clear: smaller
# differences are within what two runs of the same cell on an idle machine may show (issue 4 asks
# that repeated runs agree within 5%; issue 17 names 5% as the minimum effect).
MIN_EFFECT = 0.05
# The fewest worker processes a side needs for a verdict. Steps of one process share its memory
# layout, its allocator's state and the machine's state while it ran, so they agree far more closely
# than separate processes of the same cell: in the README's example the medians of three processes
# differ by 31% while each one's steps were steady, and on the project's 2-core VM one core's speed
# wandered by 11-22% between 0.3 s windows (DEVELOPERS.md, "Statistics"). With one process a side,
# the bootstrap can resample only steps, so its interval leaves that variation out, and the
# Mann-Whitney test takes thousands of steps of one process as independent evidence (p = 3.9e-63 for
# a 22% difference that the next run need not repeat). Two is the fewest from which the bootstrap,
# which resamples processes, sees how far they disagree at all.
MIN_PROCESSES = 2
VERDICTS = ("faster", "slower", "same", "withheld")


def verdict_rule() -> str:
    """The rule in words, as every report and comparison states it."""
    return (f"A difference is real when the 95% interval of the ratio lies wholly beyond {MIN_EFFECT:.0%} either"
            " side of 1 (below 1: B faster); the Mann-Whitney U p-value is shown but does not decide.")


@dataclass(frozen=True)
class Comparison:
    ratio: float  # B's median step time over A's
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str  # of B against A: faster, slower, same, or withheld (too few processes)
    processes: int = MIN_PROCESSES  # the fewer worker processes of the two sides

    @property
    def effect(self) -> float:
        """How much faster (negative) or slower (positive) B is than A, as a fraction."""
        return self.ratio - 1.0

    @property
    def withheld(self) -> bool:
        return self.verdict == "withheld"

    @property
    def real(self) -> bool:
        """Whether the difference passed every test of a verdict (it is faster or slower, not same)."""
        return self.verdict in ("faster", "slower")

    def describe(self) -> str:
        """The verdict as a reader sees it: `faster by 16.2% (95% CI 1.5% to 24.4%)`, `same (+1.0%, 95% CI
        -2.0% to +4.1%)`, `withheld: 1 process`."""
        if self.withheld:
            return f"withheld: {counted(self.processes, 'process')}"
        if self.verdict == "faster":
            return f"faster by {-self.effect:.1%} (95% CI {1 - self.ci_high:.1%} to {1 - self.ci_low:.1%})"
        if self.verdict == "slower":
            return f"slower by {self.effect:.1%} (95% CI {self.ci_low - 1:.1%} to {self.ci_high - 1:.1%})"
        return f"same ({self.effect:+.1%}, 95% CI {self.ci_low - 1:+.1%} to {self.ci_high - 1:+.1%})"


@dataclass(frozen=True)
class Side:
    """One side's samples, per process, with its bootstrap medians: computed once however often it is compared."""

    groups: tuple[np.ndarray, ...]
    bootstrap: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate(self.groups)

    @property
    def median(self) -> float:
        return float(np.median(self.pooled))

    @property
    def processes(self) -> int:
        return len(self.groups)


def side(samples: Sequence[Sequence[float]], rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES) -> Side:
    """Prepare one side of a comparison from its per-process samples."""
    groups = tuple(np.asarray(group, dtype=np.float64) for group in samples if len(group))
    if not groups:
        raise ValueError("both sides need samples to compare")
    return Side(groups, bootstrap_medians(groups, rng, resamples))


def judge(a: Side, b: Side) -> Comparison:
    """B against A: the ratio of medians, its interval, the p-value and the verdict."""
    ratio = b.median / a.median
    low, high = percentile_interval(b.bootstrap / a.bootstrap)
    p_value = float(scipy_stats.mannwhitneyu(a.pooled, b.pooled, alternative="two-sided").pvalue)
    processes = min(a.processes, b.processes)
    if processes < MIN_PROCESSES:
        verdict = "withheld"
    elif high < 1.0 - MIN_EFFECT:
        verdict = "faster"
    elif low > 1.0 + MIN_EFFECT:
        verdict = "slower"
    else:
        verdict = "same"
    return Comparison(ratio, low, high, p_value, verdict, processes)


def compare(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Comparison:
    """Compare per-process step times of B with those of A."""
    rng = np.random.default_rng(seed)
    side_b = side(b, rng, resamples)  # B first: the order the bootstrap has always drawn in
    side_a = side(a, rng, resamples)
    return judge(side_a, side_b)


@dataclass(frozen=True)
class Ranked:
    name: str
    median: float
    comparison: Comparison | None  # against the baseline; None for the baseline itself


def rank(
    samples: Mapping[str, Sequence[Sequence[float]]], baseline: str | None = None, excluded: Collection[str] = (),
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> list[Ranked]:
    """Every side by its median, fastest first, each compared with the baseline.

    The baseline is ``baseline`` if named, else the fastest side not in ``excluded`` (a framework whose
    numbers are wrong is never the one to beat); with no eligible side nothing is compared. Each side's
    bootstrap is drawn once from a stream seeded by its name, so a side's interval does not depend on
    which other sides were asked for, nor in which order.
    """
    if baseline is not None and baseline not in samples:
        raise ValueError(f"the baseline {baseline!r} has no samples")
    names = list(samples)
    sides = {name: side(samples[name], np.random.default_rng([seed, zlib.crc32(name.encode())]), resamples)
             for name in names}
    order = sorted(names, key=lambda name: sides[name].median)
    chosen = baseline or next((name for name in order if name not in excluded), None)
    return [Ranked(name, sides[name].median,
                   None if chosen is None or name == chosen else judge(sides[chosen], sides[name]))
            for name in order]
