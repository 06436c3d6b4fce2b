"""The timed loop and the summaries, with a fake clock: no framework, no sleeping."""

from __future__ import annotations

import pytest

from dlarena.measure.stats import summarise
from dlarena.plan.cell import Measurement
from dlarena_runner.timing import run_timed


class FakeDevice:
    """A clock that advances only when a step runs, and records the order of calls."""

    def __init__(self, step_seconds: list[float]) -> None:
        self.now = 0.0
        self.durations = iter(step_seconds)
        self.pending = 0.0
        self.events: list[str] = []

    def step(self) -> None:
        self.events.append("step")
        self.pending += next(self.durations)  # queued work: the clock sees it only after sync

    def sync(self) -> None:
        self.events.append("sync")
        self.now += self.pending
        self.pending = 0.0

    def clock(self) -> float:
        self.events.append("clock")
        return self.now


def test_first_step_and_warmup_are_kept_apart_from_the_steady_state() -> None:
    device = FakeDevice([5.0, 0.5, 0.4] + [0.1] * 100)
    timings = run_timed(device.step, device.sync, Measurement(warmup_steps=2, min_steps=3, min_time_s=0.25),
                        clock=device.clock)
    assert timings.first_step_s == pytest.approx(5.0)
    assert timings.warmup_s == pytest.approx([0.5, 0.4])
    assert timings.samples_s == pytest.approx([0.1, 0.1, 0.1])


def test_loop_runs_until_both_minimum_steps_and_minimum_time() -> None:
    device = FakeDevice([0.0] + [0.01] * 1000)
    timings = run_timed(device.step, device.sync, Measurement(warmup_steps=0, min_steps=5, min_time_s=0.5),
                        clock=device.clock)
    assert len(timings.samples_s) == 50  # time, not the step count, was the binding minimum
    device = FakeDevice([0.0] + [1.0] * 1000)
    timings = run_timed(device.step, device.sync, Measurement(warmup_steps=0, min_steps=7, min_time_s=0.5),
                        clock=device.clock)
    assert len(timings.samples_s) == 7  # the step count was


def test_caps_end_a_slow_loop() -> None:
    device = FakeDevice([0.0] + [0.01] * 1000)
    timings = run_timed(device.step, device.sync,
                        Measurement(warmup_steps=0, min_steps=1, min_time_s=100, max_steps=20), clock=device.clock)
    assert len(timings.samples_s) == 20
    device = FakeDevice([0.0] + [1.0] * 1000)
    timings = run_timed(device.step, device.sync,
                        Measurement(warmup_steps=0, min_steps=2, min_time_s=100, max_time_s=10), clock=device.clock)
    assert len(timings.samples_s) == 10


def test_clock_is_read_only_after_the_device_is_synchronised() -> None:
    device = FakeDevice([0.0] + [0.1] * 10)
    run_timed(device.step, device.sync, Measurement(warmup_steps=1, min_steps=3, min_time_s=0), clock=device.clock)
    events = device.events
    for index, event in enumerate(events):
        if event == "step":
            assert events[index + 1] == "sync", "a step must be followed by sync before anything else"
            assert events[index - 1] in ("clock", "sync")


def test_summary_of_known_samples() -> None:
    summary = summarise([4.0, 1.0, 3.0, 2.0, 5.0])
    assert summary.n == 5
    assert summary.median_s == 3.0
    assert summary.mean_s == 3.0
    assert summary.min_s == 1.0 and summary.max_s == 5.0
    assert summary.q1_s == 2.0 and summary.q3_s == 4.0 and summary.iqr_s == 2.0
    assert summary.stdev_s == pytest.approx(1.5811388, rel=1e-6)
    assert summary.throughput(batch_size=30) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        summarise([])
