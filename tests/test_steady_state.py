"""Steady-state detection (measure/steady.py) on synthetic step-time series whose answer is known:
no clock, no framework. Each series has the noise of a real step (lognormal, 3-5%)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dlarena.measure import steady
from dlarena.measure.steady import FLAT, NO_STEADY_STATE, SLOWDOWN, WARMUP, classify

SEEDS = range(5)  # every series is drawn with several seeds: the answer must not hang on one draw


def _noisy(levels: list[tuple[float, int]], seed: int, noise: float = 0.04) -> list[float]:
    """Step times at each (mean, steps) level in turn, with multiplicative lognormal noise."""
    rng = np.random.default_rng(seed)
    means = np.concatenate([np.full(steps, mean) for mean, steps in levels])
    return list(means * rng.lognormal(0.0, noise, size=len(means)))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_series_at_one_level_is_flat_and_keeps_every_step(seed: int) -> None:
    found = classify(_noisy([(0.010, 200)], seed))
    assert (found.steady_class, found.start, len(found.samples)) == (FLAT, 0, 200)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slow_start_is_a_warmup_and_is_dropped(seed: int) -> None:
    found = classify(_noisy([(0.020, 30), (0.010, 170)], seed))
    assert found.steady_class == WARMUP
    assert abs(found.start - 30) <= 2 and found.levels[0] > 1.8 * found.levels[-1]
    assert abs(np.median(found.samples) - 0.010) < 0.0005


@pytest.mark.parametrize("seed", SEEDS)
def test_a_process_that_gets_slower_is_a_slowdown(seed: int) -> None:
    found = classify(_noisy([(0.010, 100), (0.013, 100)], seed))
    assert found.steady_class == SLOWDOWN and abs(found.start - 100) <= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_a_level_that_begins_in_the_last_quarter_is_no_steady_state(seed: int) -> None:
    # a JIT that keeps recompiling: a new, faster level every 40 steps, the last one 30 steps long
    found = classify(_noisy([(0.020, 40), (0.016, 40), (0.013, 40), (0.010, 40), (0.008, 30)], seed))
    assert found.steady_class == NO_STEADY_STATE


@pytest.mark.parametrize("seed", SEEDS)
def test_a_shift_under_the_tolerance_and_a_lone_slow_step_leave_a_series_flat(seed: int) -> None:
    small_shift = classify(_noisy([(0.010, 100), (0.0102, 100)], seed))
    assert small_shift.steady_class == FLAT and small_shift.start == 0
    series = _noisy([(0.010, 200)], seed)
    series[120] *= 8  # a garbage collection
    assert classify(series).steady_class == FLAT


def test_a_series_too_short_to_cut_is_flat() -> None:
    series = [0.5, 0.4, 0.41, 0.4]
    found = classify(series)
    assert found.steady_class == FLAT and found.samples == tuple(series)
    assert len(series) < steady.MIN_CLASSIFIED_STEPS


def test_a_cell_pools_each_processs_steady_segment_and_counts_the_classes() -> None:
    from dlarena.measure.aggregate import aggregate

    warm = _noisy([(0.020, 30), (0.010, 170)], seed=1)
    flat = _noisy([(0.010, 200)], seed=2)
    figures = aggregate([{"samples_s": warm}, {"samples_s": flat}], batch_size=32, threads=1, peak_gflops=None)
    assert figures.extra["steady_state"]["classes"] == {FLAT: 1, WARMUP: 1}
    dropped = figures.extra["steady_state"]["steps_dropped"]
    assert dropped[0] > 25 and dropped[1] == 0 and figures.summary.n == 400 - dropped[0]
    assert abs(figures.summary.median_s - 0.010) < 0.0005 and figures.summary.max_s < 0.015  # no warm-up step left


def test_a_cell_where_no_process_settles_says_so_and_one_that_did_is_used_alone() -> None:
    from dlarena.measure.aggregate import aggregate

    staircase = [(0.020, 40), (0.016, 40), (0.013, 40), (0.010, 40), (0.008, 30)]
    unsettled = aggregate([{"samples_s": _noisy(staircase, seed)} for seed in (1, 2)], 32, 1, None)
    assert unsettled.extra["steady_state"]["classes"] == {NO_STEADY_STATE: 2}
    assert any("none of the 2 processes reached a steady state" in warning for warning in unsettled.summary.warnings)
    mixed = aggregate([{"samples_s": _noisy(staircase, 1)}, {"samples_s": _noisy([(0.012, 200)], 3)}], 32, 1, None)
    assert mixed.summary.processes == 1 and abs(mixed.summary.median_s - 0.012) < 0.0005
    assert not any("steady state" in warning for warning in mixed.summary.warnings)


def test_both_reports_show_each_cells_steady_state_classes(tmp_path: Path) -> None:
    from dlarena import api
    from dlarena.plan.cell import Cell
    from dlarena.store.database import Store
    from stored_runs import process, run

    db = tmp_path / "results.db"
    store = Store.open(db)
    run(store, [(Cell("torch", "fcn5-small", "train", 32, 1), [
        process("ok", 0, _noisy([(0.020, 30), (0.010, 170)], seed=1)),
        process("ok", 1, _noisy([(0.010, 200)], seed=2))])])
    store.close()
    assert "| 2 x " in api.report(db=db) and "| flat 1, warmup 1 |" in api.report(db=db)
    assert "<td>flat 1, warmup 1</td>" in api.report_page(db=db)


def test_the_ranking_and_the_comparison_rest_on_the_same_steady_segments_as_the_summary(tmp_path: Path) -> None:
    from dlarena import api
    from dlarena.plan.cell import Cell
    from dlarena.report.units import format_seconds
    from dlarena.store.database import Store
    from stored_runs import process, run

    db = tmp_path / "results.db"
    store = Store.open(db)
    warm = [process("ok", index, _noisy([(0.030, 40), (0.010, 160)], seed=index)) for index in range(2)]
    run(store, [(Cell("torch", "fcn5-small", "train", 32, 1), warm),
                (Cell("jax", "fcn5-small", "train", 32, 1),
                 [process("ok", index, _noisy([(0.012, 200)], seed=10 + index)) for index in range(2)])])
    store.close()
    torch = next(row for row in api.results(db=db) if row["framework"] == "torch")
    # with the warm-up steps torch's median would still be about 10 ms, but its mean and interval would not
    assert f"**torch** is fastest ({format_seconds(torch['median_s'])} a step)" in api.report(db=db)
    ranked = api.compare("latest", frameworks="torch,jax", db=db)
    slower = float(re.search(r"slower by ([0-9.]+)%", ranked).group(1))  # type: ignore[union-attr]
    assert 15 < slower < 25  # jax 12 ms against torch 10 ms, both from the steady segments
