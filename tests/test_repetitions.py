"""Repetitions by need (measure/repetitions.py): the stopping rule and Kalibera and Jones' split on
figures of known answer (no clock), the slow-spell processes a cell's figures leave out, and real runs
whose cells stop at their target or at their budget and say which."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dlarena import api
from dlarena.errors import DlarenaError
from dlarena.measure.aggregate import aggregate, cell_groups
from dlarena.measure.canary import MEASURED_AGAIN
from dlarena.measure.repetitions import (
    BUDGET_SPENT,
    FIXED,
    MAX_STEPS_TIME_S,
    TARGET_REACHED,
    TIME_SPENT,
    Z_95,
    Need,
    decide,
    half_width,
    kalibera_jones,
    process_half_width,
)
from dlarena.plan.suite import parse_suite
from dlarena.store.database import Store

NEED = Need(target_ci=0.03, max_processes=5)


def test_a_cell_runs_its_pilot_then_stops_at_its_target_or_its_budget() -> None:
    assert decide(0.01, 1, 2, NEED) is None  # the pilot comes first, however narrow its interval
    assert decide(0.03, 2, 2, NEED) == TARGET_REACHED
    assert decide(0.031, 2, 2, NEED) is None
    assert decide(None, 3, 2, NEED) is None  # no interval yet: another process
    assert decide(0.2, 4, 2, NEED) is None
    assert decide(0.2, 5, 2, NEED) == BUDGET_SPENT
    assert decide(0.01, 5, 2, NEED) == TARGET_REACHED  # the target is said when both hold
    fixed = Need(target_ci=0.0)
    assert decide(0.5, 2, 2, fixed) == FIXED and decide(0.5, 1, 2, fixed) is None


def test_the_half_width_is_a_share_of_the_median() -> None:
    assert half_width(10.0, 9.0, 11.4) == pytest.approx(0.12)
    assert half_width(10.0, None, 11.0) is None


def test_two_processes_that_agree_know_less_than_their_bootstrap_says() -> None:
    # Student's t: 12.71 for 1 degree of freedom, 4.30 for 2 (two-sided 95%)
    assert process_half_width([9.9, 10.1]) == pytest.approx(12.706 * 0.1414 / math.sqrt(2) / 10, rel=1e-3)
    assert process_half_width([9.9, 10.0, 10.1]) == pytest.approx(4.303 * 0.1 / math.sqrt(3) / 10, rel=1e-3)
    assert process_half_width([10.0]) is None


def _process(mean: float, spread: float, steps: int) -> list[float]:
    """Steps alternating ``spread`` either side of ``mean``: sample variance spread^2 * steps/(steps-1)."""
    return [mean + spread * (-1) ** step for step in range(steps)]


def test_kalibera_jones_splits_effort_by_the_variance_and_cost_at_each_level() -> None:
    steps, mu, spread = 100, 0.01, 0.001
    step_variance = spread ** 2 * steps / (steps - 1)  # T1
    process_variance = step_variance / 4  # T2: chosen so that T1 / T2 = 4
    # two processes at mu -+ D: their means' variance 2 D^2 holds T2 + T1 / steps
    offset = math.sqrt((process_variance + step_variance / steps) / 2)
    groups = [_process(mu - offset, spread, steps), _process(mu + offset, spread, steps)]
    process_cost = 0.975  # c2 / c1 = 97.5: r1 = ceil(sqrt(97.5 * 4)) = ceil(19.75) = 20
    split = kalibera_jones(groups, [process_cost, process_cost], target_ci=0.03, min_steps=10)
    assert split is not None
    assert split.step_variance == pytest.approx(step_variance)
    assert split.process_variance == pytest.approx(process_variance)
    assert split.step_cost_s == pytest.approx(mu) and split.process_cost_s == process_cost
    assert split.steps_per_process == 20
    expected = math.ceil(Z_95 ** 2 * (process_variance + step_variance / 20) / (0.03 * mu) ** 2)
    assert split.processes_for_target == expected


def test_processes_that_differ_no_more_than_their_steps_get_long_ones_and_noisy_ones_short() -> None:
    same = [_process(0.01, 0.001, 50), _process(0.01, 0.001, 50)]
    long = kalibera_jones(same, [2.0, 2.0], target_ci=0.03, min_steps=10)
    assert long is not None and long.process_variance == 0
    assert long.steps_per_process == math.floor(MAX_STEPS_TIME_S / 0.01)  # bounded by time, not endless
    apart = [_process(0.008, 0.0001, 50), _process(0.012, 0.0001, 50)]
    short = kalibera_jones(apart, [2.0, 2.0], target_ci=0.03, min_steps=10)
    assert short is not None and short.steps_per_process == 10  # never fewer than the suite's
    assert kalibera_jones([_process(0.01, 0.001, 50)], [2.0], 0.03, 10) is None  # one process: no estimate


def test_a_process_measured_again_after_a_slow_spell_is_left_out_of_the_figures() -> None:
    calm = {"samples_s": [0.010] * 20, "canary": {"slow_spell": False}}
    slow = {"samples_s": [0.020] * 20, "canary": {"slow_spell": True, MEASURED_AGAIN: True}}
    kept = {"samples_s": [0.012] * 20, "canary": {"slow_spell": True, MEASURED_AGAIN: False}}  # a fixed count
    figures = aggregate([calm, slow, calm], batch_size=32, threads=1, peak_gflops=None)
    assert figures.summary.median_s == pytest.approx(0.010) and figures.summary.processes == 2
    assert figures.extra["slow_spell_processes"] == 1
    assert len(cell_groups([calm, kept])) == 2 and len(cell_groups([calm, slow])) == 1
    assert cell_groups([slow]) == [[0.020] * 20]  # where every one was, they are all there is


def _repetitions(db: Path) -> dict[str, object]:
    store = Store.open(db, create=False)
    try:
        run_id = store.run(None)["id"]
        [row] = store.cell_rows(run_id)
        figures: dict[str, object] = json.loads(row["summary_data"])["repetitions"]
        figures["processes_run"] = row["processes_run"]
        return figures
    finally:
        store.close()


@pytest.mark.xdist_group("repetitions")
@pytest.mark.parametrize(("target", "time_budget_s", "why", "words"), [
    (0.99, None, TARGET_REACHED, "within 99%"),  # Student's t on 2-3 processes: wide, but under 99%
    (1e-9, None, BUDGET_SPENT, ": budget spent"),
    (1e-9, 1e-3, TIME_SPENT, "the run's time budget spent"),  # spent before the pilot ends: the pilot only
])
def test_a_run_adds_processes_until_the_target_or_a_budget_and_the_report_says_which(
    tmp_path: Path, target: float, time_budget_s: float | None, why: str, words: str,
) -> None:
    db = tmp_path / "results.db"
    suite = api.select("quick", frameworks="fault-none", workloads="fcn5-small", scenarios="train", threads=1,
                       repetitions=2, target_ci=target, max_processes=6 if why == TARGET_REACHED else 3,
                       time_budget_s=time_budget_s or 1e9)
    api.run(suite, db=db)
    figures = _repetitions(db)
    assert figures["why"] == why and figures["pilot"] == 2 and figures["target_ci"] == target
    assert figures["kalibera_jones"] is not None  # estimated from the pilot
    # each process the canary found in a slow spell was measured again (at most MAX_REMEASURES), in time
    again = int(str(figures["remeasured"])) if why != TIME_SPENT else 0
    assert figures["ran"] == figures["processes_run"]
    if why == TARGET_REACHED:  # as many as its interval needed, within the budget
        assert 2 + again <= int(str(figures["ran"])) <= 6 + again
    else:
        assert figures["ran"] == {BUDGET_SPENT: 3, TIME_SPENT: 2}[why] + again
    markdown = api.report(db=db)
    assert words in markdown and "then by more, interleaved round by round" in markdown


def test_a_target_or_budget_out_of_range_is_one_sentence() -> None:
    with pytest.raises(DlarenaError, match="--target-ci must be a share of the median from 0"):
        api.select("quick", target_ci=1.5)
    with pytest.raises(DlarenaError, match="--max-processes must be at least 1, got 0"):
        api.select("quick", max_processes=0)
    with pytest.raises(DlarenaError, match="--time-budget must be a positive number of seconds, got -5"):
        api.select("quick", time_budget_s=-5)
    with pytest.raises(DlarenaError, match="'max_processes' must be at least 1, got 0"):
        parse_suite('workloads = ["fcn5-small"]\nmax_processes = 0\n', "mine.toml")
