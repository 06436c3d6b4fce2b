"""Tidy exports: one row per cell, ready for pandas."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

FORMATS: tuple[str, ...] = ("csv", "json")

COLUMNS: tuple[str, ...] = (
    "run_id", "framework", "workload", "scenario", "device", "batch_size", "threads", "precision",
    "status", "message", "n", "median_s", "mean_s", "stdev_s", "min_s", "max_s", "q1_s", "q3_s", "iqr_s",
    "throughput", "gflops", "params", "flops_per_step", "import_s", "build_s", "first_step_s",
    "cores_used", "over_threads", "verification", "peak_rss_bytes", "framework_version", "cell_key",
)


def tidy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(tidy(rows))
    return buffer.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(tidy(rows), indent=1) + "\n"
