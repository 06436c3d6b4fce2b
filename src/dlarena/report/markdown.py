"""Markdown report of one run, in the layout of Shi et al.'s Table 4: frameworks x thread counts."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dlarena.report.units import format_bytes, format_seconds

Row = dict[str, Any]


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def _cell_text(row: Row) -> str:
    """Seconds per mini-batch for an ok cell, with its warnings; the status, in place, for any other."""
    if row["status"] == "ok" and row["median_s"] is not None:
        text = f"{row['median_s']:.4g}"
        if row.get("verification") == "mismatch":
            text = f"~~{text}~~ *invalid: mismatch*"
        if row.get("over_threads"):
            text += " (over threads)"
        if json.loads(row.get("warnings") or "[]"):
            text += " (unstable)"
        return text
    return f"*{row['status']}*"


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _seconds(value: float | None) -> str:
    return "" if value is None else format_seconds(value)


def summary_figures(row: Row) -> dict[str, Any]:
    """The figures a cell's summary keeps as JSON (measure/aggregate: GPU, compile cache, training)."""
    figures: dict[str, Any] = json.loads(row.get("summary_data") or "{}")
    return figures


def _cached(row: Row) -> bool:
    """Whether some of the cell's compiled code came from an earlier process's compile cache."""
    return bool(summary_figures(row).get("compile_cache_hits"))


def _first_step(row: Row) -> str:
    text = _seconds(row["first_step_s"])
    return f"{text} (cached)" if text and _cached(row) else text


def _break_even(row: Row) -> str:
    steps = row.get("break_even_steps")
    if steps is None:
        return ""
    cached = " (cached)" if _cached(row) else ""
    if math.isinf(steps):
        return f"never (vs {row['eager_counterpart']}){cached}"
    return f"{steps:.0f} steps (vs {row['eager_counterpart']}){cached}"


def _cell_columns(row: Row) -> list[str]:
    return [row["framework"], row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"])]


_CELL_HEADER = ["framework", "workload", "scenario", "batch", "threads"]


def _peaks_line(peaks: dict[int, dict[str, Any]]) -> str:
    if not peaks:
        return "Peak: not probed for this run."
    library = next(iter(peaks.values()))["library"]
    figures = ", ".join(f"{threads} thread{'s' if threads > 1 else ''} {peak['gflops']:.1f} GFLOP/s"
                        for threads, peak in sorted(peaks.items()))
    return f"Peak (float32 matrix product through NumPy's {library}): {figures}."


def training(row: Row) -> dict[str, Any]:
    """An accuracy cell's figures over its seeds (measure/aggregate.training_figures), or nothing."""
    figures: dict[str, Any] = summary_figures(row).get("training") or {}
    return figures


def _accuracy_text(figures: dict[str, Any]) -> str:
    text = f"{figures['accuracy']:.2%}"
    if figures["seeds"] > 1:
        text += f" ({figures['accuracy_min']:.2%} - {figures['accuracy_max']:.2%})"
    return text


def _to_target(figures: dict[str, Any]) -> tuple[str, str]:
    """Epochs and time to the target, with how many seeds reached it when not all did."""
    if figures["target_accuracy"] is None:
        return "", ""
    if not figures["reached"]:
        return f"not reached in {figures['epochs_planned']}", ""
    partial = f" ({figures['reached']} of {figures['seeds']} seeds)" if figures["reached"] < figures["seeds"] else ""
    return f"{figures['epochs_to_target']:.3g}{partial}", format_seconds(figures["time_to_target_s"])


def _accuracy_section(rows: Sequence[Row]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Training to accuracy", "",
             "Every framework trains the same real data from the same starting weights (drawn in NumPy), in"
             " the same seeded batch order; each process is one seed. Figures over seeds drop the best and"
             " the worst and average the rest (MLPerf's rule); the range shows the spread of the final test"
             " accuracy. Times are training only (steps and data handling, the first step's compilation"
             " included); testing after each epoch is timed apart.", ""]
    body = []
    for row in rows:
        figures = training(row)
        if row["status"] != "ok" or not figures:
            body.append([*_cell_columns(row)[:2], str(row["threads"]), f"*{row['status']}*", "", "", "", "", "",
                         "", ""])
            continue
        epochs, time_to_target = _to_target(figures)
        target = "" if figures["target_accuracy"] is None else f"{figures['target_accuracy']:.1%}"
        body.append([
            row["framework"], row["workload"], str(row["threads"]), _accuracy_text(figures), target, epochs,
            time_to_target, f"{format_seconds(figures['train_s'])} / {figures['epochs']:.3g} epochs",
            format_seconds(figures["eval_s"]), format_bytes(row["peak_rss_bytes"] or 0),
            _optional(None if row.get("cpu_utilisation") is None else 100 * row["cpu_utilisation"], ".0f"),
        ])
    lines += _table(["framework", "workload", "threads", "test accuracy", "target", "epochs to target",
                     "time to target", "training time", "testing time", "peak RSS", "% of allowed cores"], body)
    return lines


def render(run: Row, environment: Row, rows: Sequence[Row]) -> str:
    lines = [
        f"# dlarena run {run['id']}",
        "",
        f"Suite `{run['suite_name']}` (version {run['suite_version']}), started {run['started_at']},"
        f" status {run['status']}; dlarena {run['code_version']}.",
        "",
        "Command: `" + " ".join(["dlarena", *json.loads(run["argv"])[1:]]) + "`",
        "",
        f"Machine: {environment.get('cpu_model', '?')}, {environment.get('cores', '?')} cores,"
        f" {format_bytes(environment.get('memory_bytes', 0))}, {environment.get('os', '?')},"
        f" Python {environment.get('python', '?')}, NumPy BLAS {environment.get('numpy_blas', '?')}.",
        "Frameworks: " + ", ".join(f"{k} {v}" for k, v in sorted(environment.get("frameworks", {}).items())) + ".",
        _peaks_line(run.get("peaks", {})),
        f"Each cell was measured by {run.get('repetitions', 1)} worker process(es), run interleaved, unless its"
        " sweep said otherwise; an accuracy cell trains one seed per process.",
        "",
        "## Seconds per mini-batch (median of steady-state steps)",
        "",
        "Rows are frameworks, columns thread counts, as in Shi et al. (2016), Table 4. A cell that did not"
        " produce a time shows its status. A struck-out time is invalid: `dlarena verify` found that this"
        " framework does not compute the same numbers for this network. *(over threads)* marks a cell"
        " whose framework kept more cores busy than its thread count allowed; *(unstable)* one whose spread"
        " exceeded a threshold (see the warnings below).",
    ]
    timing = [row for row in rows if row["scenario"] != "accuracy"]
    groups: dict[tuple[str, str, str, int], list[Row]] = defaultdict(list)
    for row in timing:
        groups[(row["workload"], row["scenario"], row["device"], row["batch_size"])].append(row)
    for (workload, scenario, device, batch), group in groups.items():
        threads = sorted({row["threads"] for row in group})
        frameworks = list(dict.fromkeys(row["framework"] for row in group))
        by_key = {(row["framework"], row["threads"]): row for row in group}
        body = [
            [framework] + [_cell_text(by_key[(framework, t)]) if (framework, t) in by_key else "" for t in threads]
            for framework in frameworks
        ]
        lines += ["", f"### {workload}, {scenario}, {device}, batch {batch}", ""]
        lines += _table(["framework"] + [f"{t} thread{'s' if t > 1 else ''}" for t in threads], body)

    lines += _accuracy_section([row for row in rows if row["scenario"] == "accuracy"])
    ok = [row for row in rows if row["status"] == "ok"]
    timed = [row for row in timing if row["status"] == "ok"]
    if timed:
        lines += ["", "## Step times", "",
                  "Pooled over the cell's processes. The 95% interval of the median resamples processes, then"
                  " steps within them. p90 and p99 are the latencies of a batch for inference.", ""]
        body = [
            [
                *_cell_columns(row),
                f"{row['processes']} x {row['n'] // max(row['processes'], 1)}", format_seconds(row["median_s"]),
                f"{format_seconds(row['ci_low_s'])} - {format_seconds(row['ci_high_s'])}"
                if row.get("ci_low_s") is not None else "",
                format_seconds(row["iqr_s"]),
                _seconds(row.get("p90_s")) if row["scenario"] == "infer" else "",
                _seconds(row.get("p99_s")) if row["scenario"] == "infer" else "",
                f"{row['throughput']:.4g}", _optional(row["gflops"], ".3g"), _optional(row.get("peak_percent"), ".1f"),
                row.get("verification", ""),
            ]
            for row in timed
        ]
        lines += _table([*_CELL_HEADER, "processes x steps", "median", "95% CI", "IQR", "p90", "p99", "samples/s",
                         "GFLOP/s", "% of peak", "verify"], body)
    if ok:
        lines += ["", "## Costs and resources", "",
                  "One-off costs are medians over processes: importing the framework, building the network,"
                  " and the first step (compilation, tracing). Unless a cell says otherwise (`compile_cache ="
                  " \"shared\"`), every process compiled from an empty cache, as on first use; *(cached)* marks"
                  " a first step whose compiled code came from an earlier process's cache, and the break-even"
                  " that rests on it. Memory is the worst process: its peak resident"
                  " set, and how much it grew during the steady state (a leak shows here).", ""]
        body = [
            [
                *_cell_columns(row),
                _seconds(row["import_s"]), _seconds(row["build_s"]), _first_step(row),
                _break_even(row), _optional(row["cores_used"], ".2f"),
                _optional(None if row.get("cpu_utilisation") is None else 100 * row["cpu_utilisation"], ".0f"),
                format_bytes(row["peak_rss_bytes"] or 0),
                "" if row.get("memory_growth_bytes") is None else format_bytes(row["memory_growth_bytes"]),
            ]
            for row in ok
        ]
        lines += _table([*_CELL_HEADER, "import", "build", "first step", "compiling pays off after", "cores used",
                         "% of allowed cores", "peak RSS", "memory growth"], body)
        warned = [(row, json.loads(row.get("warnings") or "[]")) for row in ok]
        warned = [(row, warnings) for row, warnings in warned if warnings]
        if warned:
            lines += ["", "## Stability warnings", ""]
            lines += [f"- {' '.join(_cell_columns(row))}: {warning}"
                      for row, warnings in warned for warning in warnings]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", "## Cells without a time", ""]
        body = [[row["framework"], row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"]),
                 row["status"], row["message"].replace("|", "\\|").replace("\n", " ")] for row in failed]
        lines += _table(["framework", "workload", "scenario", "batch", "threads", "status", "why"], body)
    return "\n".join(lines) + "\n"
