"""Latency against throughput: a framework's inference cells of one network at several batch sizes,
side by side, smallest batch first. A larger batch raises samples per second and the time a request
waits for its batch; this table is that trade-off, read off the same cells as every other figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dlarena.report.tables import table
from dlarena.report.units import format_count, format_optional_seconds, format_seconds

Row = dict[str, Any]


def curves(rows: Sequence[Row]) -> dict[tuple[Any, ...], list[Row]]:
    """Per (framework, workload, device, precision, threads): its ok inference cells by batch size, where
    there are at least two batch sizes."""
    found: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in rows:
        if row["scenario"] == "infer" and row["status"] == "ok" and row.get("median_s"):
            key = (row["framework"], row["workload"], row["device"], row.get("precision") or "float32", row["threads"])
            found[key].append(row)
    return {key: sorted(cells, key=lambda row: row["batch_size"]) for key, cells in found.items()
            if len({row["batch_size"] for row in cells}) > 1}


def section(rows: Sequence[Row]) -> list[str]:
    found = curves(rows)
    if not found:
        return []
    lines = ["", "## Latency and throughput", "",
             "Each framework's inference at every batch size it was timed at: the median latency of a batch,"
             " its p90 and p99 where enough calls were timed (see *Step times*), and samples per second."
             " The batch that serves most samples per second is marked *most*.", ""]
    body = []
    for (framework, workload, _, precision, threads), cells in found.items():
        best = max(cells, key=lambda row: row["throughput"] or 0.0)
        name = framework if precision == "float32" else f"{framework} ({precision})"
        for row in cells:
            body.append([name, workload, str(threads), str(row["batch_size"]), format_seconds(row["median_s"]),
                         format_optional_seconds(row.get("p90_s")), format_optional_seconds(row.get("p99_s")),
                         format_count(row["throughput"]) + (" *most*" if row is best else "")])
    return lines + table(["framework", "workload", "threads", "batch", "median", "p90", "p99", "samples/s"], body)
