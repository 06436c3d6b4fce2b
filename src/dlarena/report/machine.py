"""The machine's speed over a run, from the canary readings taken between its processes
(measure/canary.py, Store.canary_readings): the typical reading, the slowest, and the processes that
ran in a slow spell."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from dlarena.measure.canary import SLOW_SPELL_THRESHOLD
from dlarena.report.units import format_seconds

Reading = dict[str, Any]


def _process(reading: Reading) -> str:
    return (f"{reading['framework']} {reading['workload']} {reading['scenario']} {reading['threads']}t"
            f" (process {reading['repetition'] + 1}, {reading['started_at']})")


def speed_points(readings: Sequence[Reading]) -> list[dict[str, Any]]:
    """Each reading after a process as the machine's relative speed (typical / reading: 1 is typical,
    0.8 is 20% slower), with the process it followed: the chart's data."""
    if not readings:
        return []
    typical = statistics.median(reading["after_s"] for reading in readings)
    return [{"started_at": reading["started_at"], "speed": typical / reading["after_s"],
             "slow_spell": bool(reading["slow_spell"]), "process": _process(reading)} for reading in readings]


def lines(readings: Sequence[Reading]) -> list[str]:
    """The Markdown section; nothing for a run measured before the canary existed."""
    if not readings:
        return []
    afters = [reading["after_s"] for reading in readings]
    typical = statistics.median(afters)
    slowest = max(readings, key=lambda reading: reading["after_s"])
    spells = [reading for reading in readings if reading["slow_spell"]]
    text = [
        "", "## The machine's speed over the run", "",
        f"A canary, fixed interpreter work with no framework, was timed on the first core before the first process"
        f" and after each: typical {format_seconds(typical)}, fastest {format_seconds(min(afters))}, slowest"
        f" {format_seconds(slowest['after_s'])} ({slowest['after_s'] / typical - 1:.0%} slower, after"
        f" {_process(slowest)}). {len(spells)} of {len(readings)} processes ran in a slow spell (the readings on both"
        f" sides over {SLOW_SPELL_THRESHOLD:.0%} slower than typical)" + (":" if spells else "."),
    ]
    if spells:
        text += [""] + [f"- {_process(reading)}: {reading['before_s'] / typical - 1:.0%} and"
                        f" {reading['after_s'] / typical - 1:.0%} slower" for reading in spells]
        text += ["", "Their step times are kept in the figures above; re-run those cells on a quieter machine to"
                 " replace them."]
    return text
