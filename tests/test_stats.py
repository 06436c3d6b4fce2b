"""Statistics of step times: intervals, stability warnings, verdicts, break-even steps. No framework needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlarena.measure.compare import MIN_EFFECT, MIN_PROCESSES, compare, rank
from dlarena.measure.stats import UNSTABLE_IQR_FRACTION, UNSTABLE_PROCESS_SPREAD, steps_for_percentile, summarise
from dlarena.report.costs import break_even_steps


def _steps(median: float, spread: float, count: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * (1 + spread * rng.standard_normal(count)))


def test_the_interval_holds_the_median_and_narrows_with_more_processes() -> None:
    few = summarise([_steps(1.0, 0.02, 50, seed) for seed in range(2)])
    many = summarise([_steps(1.0, 0.02, 50, seed) for seed in range(8)])
    for summary in (few, many):
        assert summary.ci_low_s <= summary.median_s <= summary.ci_high_s
        assert 0.98 < summary.median_s < 1.02
    assert many.ci_high_s - many.ci_low_s < few.ci_high_s - few.ci_low_s
    assert many.processes == 8 and many.n == 400 and len(many.process_medians_s) == 8


def test_the_same_samples_give_the_same_interval() -> None:
    groups = [_steps(1.0, 0.05, 30, seed) for seed in range(3)]
    assert summarise(groups) == summarise(groups)


def test_a_flat_list_is_one_process() -> None:
    summary = summarise([4.0, 1.0, 3.0, 2.0, 5.0])
    assert summary.processes == 1 and summary.median_s == 3.0 and summary.p50_s == 3.0


def test_latency_percentiles_see_the_tail_given_ten_steps_beyond_it() -> None:
    summary = summarise([1.0] * 985 + [10.0] * 15)
    assert summary.p50_s == 1.0 and summary.p90_s == 1.0 and summary.p99_s == 10.0
    # 100 steps give a p90 (10 steps beyond it) but no p99: its figure would be the second slowest step
    fewer = summarise([1.0] * 95 + [10.0] * 5)
    assert fewer.p90_s == 1.0 and fewer.p99_s is None
    assert summarise([1.0] * 99).p90_s is None
    assert (steps_for_percentile(90), steps_for_percentile(99)) == (100, 1000)


def test_a_quiet_cell_has_no_warning() -> None:
    assert summarise([_steps(1.0, 0.01, 100, seed) for seed in range(3)]).warnings == ()


def test_a_wide_spread_within_processes_is_flagged_with_advice() -> None:
    summary = summarise([_steps(1.0, 2 * UNSTABLE_IQR_FRACTION, 200, seed) for seed in range(3)])
    assert len(summary.warnings) == 1 and "interquartile range" in summary.warnings[0]
    assert "min_time_s" in summary.warnings[0]


def test_processes_that_disagree_are_flagged_even_when_each_is_steady() -> None:
    shifted = 1 + 2 * UNSTABLE_PROCESS_SPREAD
    summary = summarise([_steps(1.0, 0.005, 100, 0), _steps(shifted, 0.005, 100, 1), _steps(1.0, 0.005, 100, 2)])
    assert summary.process_spread == pytest.approx(2 * UNSTABLE_PROCESS_SPREAD, rel=0.1)
    assert len(summary.warnings) == 1 and "medians of the 3 processes differ" in summary.warnings[0]
    # the interval resamples processes, so it widens to cover the disagreement
    steady = summarise([_steps(1.0, 0.005, 100, seed) for seed in range(3)])
    assert summary.ci_high_s - summary.ci_low_s > 3 * (steady.ci_high_s - steady.ci_low_s)


def test_a_clearly_faster_b_is_faster_and_the_reverse_is_slower() -> None:
    a = [_steps(1.0, 0.03, 100, seed) for seed in range(3)]
    b = [_steps(0.8, 0.03, 100, seed + 10) for seed in range(3)]
    faster = compare(a, b)
    assert faster.verdict == "faster" and faster.ratio == pytest.approx(0.8, rel=0.02)
    assert faster.ci_low < faster.ratio < faster.ci_high < 1 and faster.p_value < 1e-6
    slower = compare(b, a)
    assert slower.verdict == "slower" and slower.effect == pytest.approx(0.25, rel=0.05)


def test_a_significant_but_small_difference_is_the_same() -> None:
    a = [_steps(1.0, 0.01, 2000, seed) for seed in range(3)]
    b = [_steps(1.0 - MIN_EFFECT / 3, 0.01, 2000, seed + 10) for seed in range(3)]
    result = compare(a, b)
    assert result.p_value < 1e-6  # thousands of steps make any difference significant
    assert result.verdict == "same"


def test_identical_distributions_are_the_same() -> None:
    a = [_steps(1.0, 0.05, 100, seed) for seed in range(3)]
    b = [_steps(1.0, 0.05, 100, seed + 10) for seed in range(3)]
    assert compare(a, b).verdict == "same"


def test_one_process_a_side_withholds_the_verdict_however_small_the_p_value() -> None:
    """Issue 12: `--repetitions 1` printed `p-value 3.9e-63 ... faster (-21.9%)`: one process cannot show
    how far another process of the same cell would land."""
    a = [_steps(1.0, 0.03, 1000, 0)]
    b = [_steps(0.78, 0.03, 1000, 1)]
    one = compare(a, b)
    assert one.p_value < 1e-60 and one.ratio == pytest.approx(0.78, rel=0.01)
    assert one.verdict == "withheld" and not one.real and one.describe() == "withheld: 1 process"
    assert MIN_PROCESSES == 2
    two = compare([*a, _steps(1.0, 0.03, 1000, 2)], [*b, _steps(0.78, 0.03, 1000, 3)])
    assert two.verdict == "faster" and two.describe().startswith("faster by 2")
    # one side with enough processes is not enough: the other side's single process still hides its spread
    assert compare([*a, _steps(1.0, 0.03, 1000, 2)], b).verdict == "withheld"


def test_rank_sets_every_side_against_the_fastest_or_a_named_baseline() -> None:
    sides = {name: [_steps(median, 0.02, 200, seed + 10 * index) for seed in range(3)]
             for index, (name, median) in enumerate((("slow", 1.5), ("fast", 1.0), ("wrong", 0.5), ("tie", 1.01)))}
    ranked = rank(sides, excluded={"wrong"})
    assert [item.name for item in ranked] == ["wrong", "fast", "tie", "slow"]
    by_name = {item.name: item for item in ranked}
    assert by_name["fast"].comparison is None  # the baseline: the fastest not excluded
    assert by_name["slow"].comparison is not None and by_name["slow"].comparison.verdict == "slower"
    assert by_name["slow"].comparison.ratio == pytest.approx(1.5, rel=0.02)
    assert by_name["tie"].comparison is not None and by_name["tie"].comparison.verdict == "same"
    assert by_name["wrong"].comparison is not None and by_name["wrong"].comparison.verdict == "faster"
    against_slow = {item.name: item.comparison for item in rank(sides, baseline="slow")}
    assert against_slow["slow"] is None and against_slow["fast"] is not None
    assert against_slow["fast"].verdict == "faster" and against_slow["fast"].ratio == pytest.approx(1 / 1.5, rel=0.02)
    # a side's interval does not depend on which other sides were asked for, nor in which order
    assert rank({"slow": sides["slow"], "fast": sides["fast"]})[1].comparison == by_name["slow"].comparison


def test_compiling_pays_off_when_its_steps_have_made_up_for_its_head_start() -> None:
    eager = {"build_s": 0.1, "first_step_s": 0.2, "median_s": 0.10}
    compiled = {"build_s": 1.1, "first_step_s": 5.2, "median_s": 0.05}
    # head start: (1.1 + 5.2 - 0.05) - (0.1 + 0.2 - 0.1) = 6.05 s; saving 0.05 s a step
    assert break_even_steps(compiled, eager) == 121
    assert break_even_steps({**compiled, "median_s": 0.2}, eager) == math.inf
    assert break_even_steps({**compiled, "build_s": None}, eager) is None
    assert break_even_steps(eager, eager) == 0.0
