"""Tidy exports: one row per cell, ready for pandas."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from dlarena.report.markdown import summary_figures, training

FORMATS: tuple[str, ...] = ("csv", "json")

COLUMNS: tuple[str, ...] = (
    "run_id", "framework", "workload", "scenario", "device", "batch_size", "threads", "precision",
    "status", "message", "processes", "n", "median_s", "ci_low_s", "ci_high_s", "mean_s", "stdev_s", "min_s",
    "max_s", "q1_s", "q3_s", "iqr_s", "p50_s", "p90_s", "p99_s", "process_spread", "warnings", "throughput",
    "gflops", "peak_gflops", "peak_percent", "params", "flops_per_step", "import_s", "build_s", "first_step_s",
    "compile_cache", "compile_cache_hits", "break_even_steps", "eager_counterpart", "cores_used", "cpu_utilisation",
    "over_threads", "verification",
    "peak_rss_bytes", "memory_growth_bytes", "framework_version", "cell_key",
    "dataset", "seeds", "accuracy", "accuracy_min", "accuracy_max", "target_accuracy", "reached",
    "epochs_to_target", "time_to_target_s", "epochs_trained", "training_s", "testing_s",
)
# Accuracy cells' columns and where they come from in the summary's training figures
# (measure/aggregate.training_figures); empty for timing cells.
TRAINING_COLUMNS: dict[str, str] = {
    "dataset": "dataset", "seeds": "seeds", "accuracy": "accuracy", "accuracy_min": "accuracy_min",
    "accuracy_max": "accuracy_max", "target_accuracy": "target_accuracy", "reached": "reached",
    "epochs_to_target": "epochs_to_target", "time_to_target_s": "time_to_target_s", "epochs_trained": "epochs",
    "training_s": "train_s", "testing_s": "eval_s",
}


# Columns read from the summary's JSON figures (measure/aggregate.compile_cache_figures).
SUMMARY_DATA_COLUMNS = ("compile_cache", "compile_cache_hits")


def _value(row: dict[str, Any], column: str) -> Any:
    if column in SUMMARY_DATA_COLUMNS:
        return summary_figures(row).get(column)
    value = row.get(column)
    if column == "warnings":
        return " ".join(json.loads(value or "[]"))
    if isinstance(value, float) and math.isinf(value):
        return None if column != "break_even_steps" else "never"
    return value


def tidy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    tidied = []
    for row in rows:
        figures = training(row)
        tidied.append({column: figures.get(TRAINING_COLUMNS[column]) if column in TRAINING_COLUMNS
                       else _value(row, column) for column in COLUMNS})
    return tidied


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(tidy(rows))
    return buffer.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(tidy(rows), indent=1) + "\n"
