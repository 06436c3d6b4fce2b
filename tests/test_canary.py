"""The machine's canary (measure/canary.py): the slow-spell decision on readings of known answer (no
clock), one real reading, and a real run whose processes carry the canary's judgement into both reports."""

from __future__ import annotations

from pathlib import Path

import pytest

import browser
from dlarena import api
from dlarena.measure.canary import MIN_READINGS, SLOW_SPELL_THRESHOLD, judge, read
from dlarena.store.database import Store

TYPICAL = 1e-4


def test_a_process_is_in_a_slow_spell_only_when_both_sides_are_slow() -> None:
    slow = TYPICAL * (1 + SLOW_SPELL_THRESHOLD) * 1.05
    readings = [TYPICAL] * 6
    assert judge(slow, slow, [*readings, slow, slow]).slow_spell
    assert not judge(TYPICAL, slow, [*readings, slow]).slow_spell  # one slow window: the ordinary wander
    assert not judge(slow, TYPICAL, [*readings, slow]).slow_spell
    barely = TYPICAL * (1 + SLOW_SPELL_THRESHOLD) * 0.98
    assert not judge(barely, barely, [*readings, barely, barely]).slow_spell


def test_too_few_readings_judge_nothing() -> None:
    slow = TYPICAL * 3
    judgement = judge(slow, slow, [slow] * (MIN_READINGS - 1))
    assert judgement.typical_s is None and not judgement.slow_spell


def test_a_reading_is_a_short_positive_time_and_leaves_the_affinity_as_it_was() -> None:
    import os

    allowed = os.sched_getaffinity(0)
    reading = read(window_s=0.05)
    assert 0 < reading < 0.05 and os.sched_getaffinity(0) == allowed


@pytest.mark.xdist_group("canary")
def test_a_run_records_the_canary_of_every_process_and_both_reports_show_the_machines_speed(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    suite = api.select("quick", frameworks="fault-none", workloads="fcn5-small", scenarios="train", threads=1,
                       repetitions=2, target_ci=0)
    summary = api.run(suite, db=db)
    store = Store.open(db, create=False)
    try:
        readings = store.canary_readings(summary.run_id)
    finally:
        store.close()
    assert len(readings) == 2 and all(reading["after_s"] > 0 and reading["before_s"] > 0 for reading in readings)
    assert readings[0]["after_s"] == readings[1]["before_s"]  # one reading between two processes, shared
    markdown = api.report(db=db)
    assert "## The machine's speed over the run" in markdown and "of 2 processes ran in a slow spell" in markdown
    page = tmp_path / "report.html"
    page.write_text(api.report_page(db=db), encoding="utf-8")
    assert "<section id=\"machine-speed\">" in page.read_text(encoding="utf-8")
    if browser.missing() is None:  # the chart draws one mark per process (make test has a browser)
        with browser.chromium(tmp_path / "chromium") as driver:
            browser.open_report(driver, page)
            assert browser.console_errors(driver) == []
            assert browser.cell_marks(driver, "chart-machine-machine-speed") == 2
