"""The report's data-parallel section: each train-dp cell with its replicas, its check against one
process on the whole batch, and its scaling efficiency (measure/scaling.py) against one replica."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dlarena.measure.scaling import scaling
from dlarena.report.tables import table
from dlarena.report.units import format_count, format_seconds
from dlarena.spec.workload import DATA_PARALLEL_SCENARIO

Row = dict[str, Any]


def _check_text(row: Row) -> str:
    found = json.loads(row.get("data_parallel") or "null") or {}
    figures = found.get("check")
    if not figures:
        return ""
    verdict = "passed" if figures["passed"] else "**failed**"
    return f"{verdict} (gradient {figures['gradient_error']:.1e}, loss {figures['loss_error']:.1e})"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def section(rows: Sequence[Row]) -> list[str]:
    cells = [row for row in rows if row["scenario"] == DATA_PARALLEL_SCENARIO]
    if not cells:
        return []
    efficiency = {id(item.row): item for item in scaling(cells)}
    lines = ["", "## Data-parallel scaling", "",
             "One training step over several replicas (processes with their own cores), the batch being the"
             " global one, split evenly, through each framework's own data-parallel runtime. *check*: the"
             " replicas' averaged gradient and mean loss against one process's on the whole batch, relative to"
             " the largest gradient and to the loss. Weak scaling keeps each replica's batch (against one replica"
             " at the per-replica batch: its step time over this one's); strong scaling keeps the global batch"
             " (one replica's step time over this one's, divided by the replicas); 100% is perfect.", ""]
    body = []
    for row in cells:
        timed = row["status"] == "ok" and row.get("median_s")
        found = efficiency.get(id(row))
        body.append([
            row["framework"], row["workload"], str(row["replicas"]), str(row["batch_size"]),
            str(row["batch_size"] // row["replicas"]), str(row["threads"]),
            format_seconds(row["median_s"]) if timed else f"*{row['status']}*",
            format_count(row["throughput"]) if timed else "",
            _share(found.weak if found else None), _share(found.strong if found else None), _check_text(row),
        ])
    return lines + table(["framework", "workload", "replicas", "global batch", "per replica", "threads each",
                          "median step", "samples/s", "weak", "strong", "check"], body)
