"""Is B faster than A? A verdict per cell from the step times of both, with its evidence.

The ratio is B's median step time over A's (below 1: B is faster), with a hierarchical bootstrap
interval (stats.bootstrap_medians). The Mann-Whitney U test (SciPy) asks whether B's steps tend to
be shorter or longer than A's at all; with thousands of steps it finds differences far too small to
matter, so a verdict also needs the ratio to be at least a minimum effect away from 1 and its
interval to exclude 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats  # type: ignore[import-untyped]

from dlarena.measure.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_medians, percentile_interval

# The usual significance level for a two-sided test.
SIGNIFICANCE_LEVEL = 0.05
# Smaller differences are within what two runs of the same cell on an idle machine may show (issue 4
# asks that repeated runs agree within 5%), so they are not claimed.
MIN_EFFECT = 0.05
VERDICTS = ("faster", "slower", "same")


@dataclass(frozen=True)
class Comparison:
    ratio: float  # B's median step time over A's
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str  # of B against A: faster, slower or same

    @property
    def effect(self) -> float:
        """How much faster (negative) or slower (positive) B is than A, as a fraction."""
        return self.ratio - 1.0


def compare(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Comparison:
    """Compare per-process step times of B with those of A."""
    groups_a = [np.asarray(group, dtype=np.float64) for group in a if len(group)]
    groups_b = [np.asarray(group, dtype=np.float64) for group in b if len(group)]
    if not groups_a or not groups_b:
        raise ValueError("both sides need samples to compare")
    pooled_a, pooled_b = np.concatenate(groups_a), np.concatenate(groups_b)
    ratio = float(np.median(pooled_b) / np.median(pooled_a))
    rng = np.random.default_rng(seed)
    ratios = bootstrap_medians(groups_b, rng, resamples) / bootstrap_medians(groups_a, rng, resamples)
    low, high = percentile_interval(ratios)
    p_value = float(scipy_stats.mannwhitneyu(pooled_a, pooled_b, alternative="two-sided").pvalue)
    significant = p_value < SIGNIFICANCE_LEVEL
    if significant and ratio <= 1.0 - MIN_EFFECT and high < 1.0:
        verdict = "faster"
    elif significant and ratio >= 1.0 + MIN_EFFECT and low > 1.0:
        verdict = "slower"
    else:
        verdict = "same"
    return Comparison(ratio, low, high, p_value, verdict)
