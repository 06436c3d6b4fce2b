"""Tidy exports: one row per cell, ready for pandas (`dlarena export`, `dlarena.api.results`).

Every column holds one type: numbers are numbers (times in seconds, memory in bytes, counts as
integers), and a figure a cell does not have is empty (None in JSON and in `api.results`). Columns
that need a word:

- ``warnings``: the cell's stability warnings joined by "; "; ``unstable`` is True when there is one,
  False when there is none, and empty for a cell without figures.
- ``break_even_steps``: the step from which a compiled framework has spent less time in total than its
  eager counterpart (``eager_counterpart``); empty when compiling never pays off (``eager_counterpart``
  named) or when the framework has no eager counterpart in the run (``eager_counterpart`` empty).
- ``epochs_to_target``, ``epochs_trained``: means over seeds (measure/aggregate), integers when whole.
- ``denormals``: how the framework treated subnormal numbers, measured in each process (``flush``,
  ``keep``, ``mixed``; several joined by "," when its processes differed); ``denormals_setting``: the
  cell's setting (``default``, ``flush``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from dlarena.report.annotate import stability_warnings, unstable
from dlarena.report.markdown import summary_figures, training

FORMATS: tuple[str, ...] = ("csv", "json")

COLUMNS: tuple[str, ...] = (
    "run_id", "framework", "workload", "scenario", "device", "batch_size", "threads", "precision",
    "status", "message", "processes", "n", "median_s", "ci_low_s", "ci_high_s", "mean_s", "stdev_s", "min_s",
    "max_s", "q1_s", "q3_s", "iqr_s", "p50_s", "p90_s", "p99_s", "process_spread", "warnings", "unstable",
    "throughput",
    "gflops", "peak_gflops", "peak_percent", "params", "flops_per_step", "import_s", "build_s", "first_step_s",
    "compile_cache", "compile_cache_hits", "break_even_steps", "eager_counterpart", "cores_used", "cpu_utilisation",
    "over_threads", "verification", "denormals_setting", "denormals",
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


# Columns read from the summary's JSON figures (measure/aggregate.compile_cache_figures and
# denormal_figures: the subnormal mode asked for, and the one measured, flush, keep or mixed).
SUMMARY_DATA_COLUMNS = ("compile_cache", "compile_cache_hits", "denormals_setting", "denormals")


# Counts that a mean over seeds or a step count may hold as a float: written as integers when whole.
COUNT_COLUMNS = ("seeds", "reached", "epochs_to_target", "epochs_trained", "break_even_steps")
# How the warnings of a cell are joined in one field: a warning's own text holds commas and colons.
WARNING_SEPARATOR = "; "


def _value(row: dict[str, Any], column: str) -> Any:
    if column in SUMMARY_DATA_COLUMNS:
        return summary_figures(row).get(column)
    if column == "warnings":
        return WARNING_SEPARATOR.join(stability_warnings(row))
    if column == "unstable":
        return None if row.get("median_s") is None else unstable(row)
    value = row.get(column)
    if isinstance(value, float) and math.isinf(value):
        return None  # break_even_steps: never (see the module's docstring)
    return value


def _count(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def tidy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The export's rows: one dict per cell with every column of COLUMNS, in that order."""
    tidied = []
    for row in rows:
        figures = training(row)
        values = {column: figures.get(TRAINING_COLUMNS[column]) if column in TRAINING_COLUMNS
                  else _value(row, column) for column in COLUMNS}
        tidied.append({column: _count(value) if column in COUNT_COLUMNS else value
                       for column, value in values.items()})
    return tidied


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(tidy(rows))
    return buffer.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(tidy(rows), indent=1) + "\n"
