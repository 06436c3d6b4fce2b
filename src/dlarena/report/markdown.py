"""Markdown report of one run, in the layout of Shi et al.'s Table 4: frameworks x thread counts."""

from __future__ import annotations

import json
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
        return text
    return f"*{row['status']}*"


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


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
        "",
        "## Seconds per mini-batch (median of steady-state steps)",
        "",
        "Rows are frameworks, columns thread counts, as in Shi et al. (2016), Table 4. A cell that did not"
        " produce a time shows its status. A struck-out time is invalid: `dlarena verify` found that this"
        " framework does not compute the same numbers for this network. *(over threads)* marks a cell"
        " whose framework kept more cores busy than its thread count allowed.",
    ]
    groups: dict[tuple[str, str, str, int], list[Row]] = defaultdict(list)
    for row in rows:
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

    ok = [row for row in rows if row["status"] == "ok"]
    if ok:
        lines += ["", "## Details of measured cells", ""]
        body = [
            [
                row["framework"], row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"]),
                format_seconds(row["median_s"]), format_seconds(row["iqr_s"]), str(row["n"]),
                f"{row['throughput']:.4g}", _optional(row["gflops"], ".3g"),
                format_seconds(row["import_s"]), format_seconds(row["build_s"]),
                format_seconds(row["first_step_s"]), _optional(row["cores_used"], ".2f"),
                format_bytes(row["peak_rss_bytes"] or 0), row.get("verification", ""),
            ]
            for row in ok
        ]
        lines += _table(
            ["framework", "workload", "scenario", "batch", "threads", "median", "IQR", "steps",
             "samples/s", "GFLOP/s", "import", "build", "first step", "cores used", "peak RSS", "verify"],
            body,
        )
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", "## Cells without a time", ""]
        body = [[row["framework"], row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"]),
                 row["status"], row["message"].replace("|", "\\|").replace("\n", " ")] for row in failed]
        lines += _table(["framework", "workload", "scenario", "batch", "threads", "status", "why"], body)
    return "\n".join(lines) + "\n"
