"""What a reader must know about each result beside its numbers: is it verified, did it keep its threads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dlarena.measure.repetitions import BUDGET_SPENT, TARGET_REACHED, TIME_SPENT

# A cell may use somewhat more CPU time than its threads allow: the Python interpreter's own thread,
# a framework's housekeeping threads and the coarse tick of process CPU accounting (10 ms) add up to
# a few percent on short loops. A quarter of a core per thread is beyond that: the framework ran
# more threads than it was given.
CORES_USED_TOLERANCE = 0.25


def family(workload: str) -> str:
    """A published workload and its small twin share one builder, so one verification covers both."""
    return workload.removesuffix("-small")


def annotate(rows: Sequence[dict[str, Any]], verifications: dict[tuple[str, str, str | None, str], str]) -> None:
    """Add ``verification`` (verified, mismatch, unverified, ...) and ``over_threads`` to each row: the
    verdict of its framework and version on its network (or the network's twin) in its precision."""
    by_family: dict[tuple[str, str, str | None, str], str] = {}
    for (framework, workload, version, precision), verdict in verifications.items():
        by_family[(framework, family(workload), version, precision)] = verdict
    for row in rows:
        key = (row["framework"], row["workload"], row.get("framework_version"), row.get("precision") or "float32")
        status: str | None = verifications.get(key) or by_family.get((key[0], family(key[1]), key[2], key[3]))
        row["verification"] = {"ok": "verified", None: "unverified"}.get(status, status)
        cores, threads = row.get("cores_used"), row["threads"]
        row["over_threads"] = cores is not None and cores > threads * (1 + CORES_USED_TOLERANCE)


def stability_warnings(row: dict[str, Any]) -> list[str]:
    """A cell's stability warnings (measure/stats.stability_warnings' sentences), stored as JSON."""
    warnings: list[str] = json.loads(row.get("warnings") or "[]")
    return warnings


def unstable(row: dict[str, Any]) -> bool:
    """Whether a cell's step times were flagged unstable: every such warning says `unstable: ...`."""
    return any(warning.startswith("unstable") for warning in stability_warnings(row))


def steady_state(row: dict[str, Any]) -> str:
    """Its processes' steady-state classes (measure/steady.py) as `warmup 2, flat 1`; blank for a cell
    measured before dlarena classified them."""
    figures: dict[str, Any] = json.loads(row.get("summary_data") or "{}")
    classes: dict[str, int] = (figures.get("steady_state") or {}).get("classes") or {}
    return ", ".join(f"{name} {count}" for name, count in classes.items())


def processes(row: dict[str, Any]) -> str:
    """How many processes measured the cell and why that many (measure/repetitions.py), as
    `4: within 3% (2.1%)` or `6: budget spent (7.4%, target 3%)`, with the ones run in a slow spell
    and measured again; blank for a cell measured before dlarena decided counts by need."""
    figures: dict[str, Any] = json.loads(row.get("summary_data") or "{}")
    repetitions: dict[str, Any] = figures.get("repetitions") or {}
    if not repetitions:
        return ""
    width, target = repetitions.get("half_width"), repetitions.get("target_ci")
    text = str(repetitions["ran"])
    if repetitions.get("why") == TARGET_REACHED and target:
        text += f": within {target:.0%}" + (f" ({width:.1%})" if width is not None else "")
    elif repetitions.get("why") == BUDGET_SPENT:
        text += ": budget spent" + (f" ({width:.1%}, target {target:.0%})" if width is not None and target else "")
    elif repetitions.get("why") == TIME_SPENT:
        text += ": the run's time budget spent" + (f" ({width:.1%}, target {target:.0%})"
                                                   if width is not None and target else "")
    if repetitions.get("remeasured"):
        text += f"; {repetitions['remeasured']} again after a slow spell"
    return text
