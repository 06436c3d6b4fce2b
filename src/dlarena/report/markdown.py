"""Markdown report of one run, in the layout of Shi et al.'s Table 4: frameworks x thread counts."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dlarena.measure.stats import TAIL_OBSERVATIONS, steps_for_percentile
from dlarena.report import machine
from dlarena.report.annotate import processes, stability_warnings, steady_state
from dlarena.report.tables import table as _table
from dlarena.report.units import format_bytes, format_count, format_optional_seconds, format_seconds
from dlarena.wording import counted

if TYPE_CHECKING:  # the ranking's statistics import SciPy, which `dlarena export` does not need
    from dlarena.report.comparison import PairComparison
    from dlarena.report.ranking import Ranking

Row = dict[str, Any]


def _cell_text(row: Row) -> str:
    """Time per mini-batch for an ok cell, with its warnings; the status, in place, for any other."""
    if row["status"] == "ok" and row["median_s"] is not None:
        text = format_seconds(row["median_s"])
        if row.get("verification") == "mismatch":
            text = f"~~{text}~~ *invalid: mismatch*"
        if row.get("over_threads"):
            text += " (over threads)"
        if stability_warnings(row):
            text += " (unstable)"
        return text
    return f"*{row['status']}*"


def _optional(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def summary_figures(row: Row) -> dict[str, Any]:
    """The figures a cell's summary keeps as JSON (measure/aggregate: GPU, compile cache, training)."""
    figures: dict[str, Any] = json.loads(row.get("summary_data") or "{}")
    return figures


def compile_cache_hit(row: Row) -> bool:
    """Whether some of the cell's compiled code came from an earlier process's compile cache."""
    return bool(summary_figures(row).get("compile_cache_hits"))


def _first_step(row: Row) -> str:
    text = format_optional_seconds(row["first_step_s"])
    return f"{text} (cached)" if text and compile_cache_hit(row) else text


def _rounded(value: float) -> float:
    """Three significant digits, as the report writes a mean over seeds (12.7 epochs)."""
    return float(f"{value:.3g}")


def _break_even(row: Row) -> str:
    steps = row.get("break_even_steps")
    if steps is None:
        return ""
    cached = " (cached)" if compile_cache_hit(row) else ""
    if math.isinf(steps):
        return f"never (vs {row['eager_counterpart']}){cached}"
    return f"{counted(round(steps), 'step')} (vs {row['eager_counterpart']}){cached}"


def _framework(row: Row) -> str:
    """The framework, with its precision where that is not float32: `torch (bfloat16)`."""
    precision = row.get("precision") or "float32"
    return row["framework"] if precision == "float32" else f"{row['framework']} ({precision})"


def _cell_columns(row: Row) -> list[str]:
    return [_framework(row), row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"])]


_CELL_HEADER = ["framework", "workload", "scenario", "batch", "threads"]


def _processes_line(run: dict[str, Any]) -> str:
    """How the run chose each cell's processes (orchestrator._execute, measure/repetitions.py)."""
    pilot = counted(run.get("repetitions", 1), "worker process")
    if not run.get("target_ci"):
        return (f"Each cell was measured by {pilot}, run interleaved, unless its sweep said otherwise; an accuracy"
                " cell trains one seed per process.")
    return (f"Each timing cell was measured by a pilot of {pilot}, then by more, interleaved round by round, until"
            f" the 95% interval of its median was within {run['target_ci']:.0%} of it or"
            f" {run['max_processes']} processes had run; an accuracy cell trains one seed per process.")


def machine_text(environment: Row) -> str:
    """A machine in a phrase: CPU, cores, memory, OS, Python and NumPy's BLAS."""
    return (f"{environment.get('cpu_model', '?')},"
            f" {counted(environment['cores'], 'core') if 'cores' in environment else '? cores'},"
            f" {format_bytes(environment.get('memory_bytes', 0))}, {environment.get('os', '?')},"
            f" Python {environment.get('python', '?')}, NumPy BLAS {environment.get('numpy_blas', '?')}")


def _nodes_lines(nodes: Sequence[Row], orchestrator: Row) -> list[str]:
    """The cluster nodes that measured (`--executor ray`), each with its own machine and framework versions
    where they differ from the orchestrator's; nothing for a local run."""
    if not nodes:
        return []
    lines = ["", f"Measured on {counted(len({node['node'] for node in nodes}), 'cluster node')} (Ray), each"
             " cell's processes on one node at a time; tables and rankings compare frameworks within a node:", ""]
    for node in nodes:
        machine = node["machine"]
        ours = orchestrator.get("frameworks", {})
        differ = ", ".join(f"{k} {v}" for k, v in sorted(machine.get("frameworks", {}).items()) if ours.get(k) != v)
        peak = _peaks_line(node.get("peaks", {})) if node.get("peaks") else "Peak: not probed."
        lines.append(f"- node **{node['node']}** ({counted(node['processes'], 'process', 'processes')}):"
                     f" {machine_text(machine)}, host {machine.get('hostname', '?')}; frameworks "
                     + (f"unlike the orchestrator's: {differ}. " if differ else "as the orchestrator's. ") + peak)
    return [*lines, ""]


def _nodes_compared(comparisons: Sequence[PairComparison]) -> list[str]:
    """Each cluster node against the first, cell by cell (a `--spread` run): the machines compared."""
    from dlarena.report.comparison import render

    if not comparisons:
        return []
    lines = ["", "## The nodes compared", "",
             "The same cells on each node, against the first node (`dlarena compare RUN --nodes A,B` for another"
             " pair): how much faster or slower each machine runs each framework."]
    for comparison in comparisons:
        table = render(comparison.label_a, comparison.label_b, comparison.comparisons, comparison.differences,
                       comparison.unmatched).splitlines()
        lines += ["", "#" * 2 + table[0], *table[1:]]
    return lines


def _peaks_line(peaks: dict[int, dict[str, Any]], nodes: Sequence[Row] = ()) -> str:
    if not peaks:
        return "Peak: probed on each node (above)." if nodes else "Peak: not probed for this run."
    library = next(iter(peaks.values()))["library"]
    figures = ", ".join(f"{counted(threads, 'thread')} {peak['gflops']:.1f} GFLOP/s"
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
    seeds = counted(figures["seeds"], "seed")
    partial = f" ({figures['reached']} of {seeds})" if figures["reached"] < figures["seeds"] else ""
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
            time_to_target, f"{format_seconds(figures['train_s'])} / {counted(_rounded(figures['epochs']), 'epoch')}",
            format_seconds(figures["eval_s"]), format_bytes(row["peak_rss_bytes"] or 0),
            _optional(None if row.get("cpu_utilisation") is None else 100 * row["cpu_utilisation"], ".0f"),
        ])
    lines += _table(["framework", "workload", "threads", "test accuracy", "target", "epochs to target",
                     "time to target", "training time", "testing time", "peak RSS", "% of allowed cores"], body)
    lines += denormals_note(rows)
    return lines


# How the report words each subnormal mode a cell's processes measured (dlarena_runner/denormals.py).
_DENORMAL_WORDS = {"flush": "flushed to zero by", "keep": "kept by", "mixed": "flushed in some threads only by"}


def denormals_note(rows: Sequence[Row]) -> list[str]:
    """A note under a table whose frameworks did not all treat subnormal numbers alike; else nothing.

    Each ok cell's summary says which mode its processes measured: a table mixing them (TensorFlow
    and JAX flush by default, PyTorch and ONNX Runtime keep) compares, in part, floating-point modes.
    """
    modes = {row["framework"]: summary_figures(row).get("denormals") for row in rows if row["status"] == "ok"}
    by_mode: dict[str, list[str]] = defaultdict(list)
    for framework, mode in modes.items():
        if mode:
            by_mode[mode].append(framework)
    if len(by_mode) < 2 and not set(by_mode) - {"flush", "keep"}:
        return []
    parts = [f"{_DENORMAL_WORDS.get(mode, 'differently in different processes by')} {', '.join(sorted(names))}"
             for mode, names in sorted(by_mode.items())]
    return ["", f"*Mixed subnormal modes: subnormal numbers were {'; '.join(parts)} (measured in each worker"
                " process by a product of the framework's own). Arithmetic on subnormals can be many times slower"
                " on a CPU, and a network whose values underflow (saturated sigmoids, vanishing gradients)"
                " computes many: part of a difference here is the floating-point mode, not the framework."
                " `--denormals flush` runs every framework that can in the same mode.*"]


def render(run: Row, environment: Row, rows: Sequence[Row], rankings: Sequence[Ranking] = (),
           capabilities: Sequence[Row] = (), nodes: Sequence[PairComparison] = ()) -> str:
    """The report: the run, then which framework is fastest (``rankings``, report/ranking), then the tables,
    then what the run's frameworks can do (``capabilities``: the database's latest probe answers)."""
    from dlarena.report import (
        against_published,  # it reads this module's figures of a training cell
        data_parallel,
        latency,
    )
    from dlarena.report import precision as lower_precision
    from dlarena.report.ranking import headline

    lines = [
        f"# dlarena run {run['id']}",
        "",
        f"Suite `{run['suite_name']}` (version {run['suite_version']}), started {run['started_at']},"
        f" status {run['status']}; dlarena {run['code_version']}.",
        "",
        "Command: `" + " ".join(["dlarena", *json.loads(run["argv"])[1:]]) + "`",
        "",
        f"Machine{' of the orchestrator' if run.get('nodes') else ''}: {machine_text(environment)}.",
        "Frameworks: " + ", ".join(f"{k} {v}" for k, v in sorted(environment.get("frameworks", {}).items())) + ".",
        *_nodes_lines(run.get("nodes", []), environment),
        _peaks_line(run.get("peaks", {}), run.get("nodes", [])),
        _processes_line(run),
        "",
        *([*headline(rankings), ""] if rankings else []),
        "## Time per mini-batch (median of steady-state steps)",
        "",
        "Rows are frameworks, columns thread counts, as in Shi et al. (2016), Table 4. A cell that did not"
        " produce a time shows its status. A struck-out time is invalid: `dlarena verify` found that this"
        " framework does not compute the same numbers for this network. *(over threads)* marks a cell"
        " whose framework kept more cores busy than its thread count allowed; *(unstable)* one whose spread"
        " exceeded a threshold (see the warnings below).",
    ]
    timing = [row for row in rows if row["scenario"] != "accuracy"]
    groups: dict[tuple[str, str, str, int, int, str | None], list[Row]] = defaultdict(list)
    for row in timing:
        groups[(row["workload"], row["scenario"], row["device"], row["batch_size"], row.get("replicas") or 1,
                row.get("node"))].append(row)
    for (workload, scenario, device, batch, replicas, node), group in groups.items():
        threads = sorted({row["threads"] for row in group})
        frameworks = list(dict.fromkeys(_framework(row) for row in group))
        by_key = {(_framework(row), row["threads"]): row for row in group}
        body = [
            [framework] + [_cell_text(by_key[(framework, t)]) if (framework, t) in by_key else "" for t in threads]
            for framework in frameworks
        ]
        lines += ["", f"### {workload}, {scenario}, {device}, batch {batch}"
                  + (f", {counted(replicas, 'replica')}" if replicas != 1 else "") + (f", node {node}" if node else ""),
                  ""]
        lines += _table(["framework"] + [counted(t, "thread") for t in threads], body)
        lines += denormals_note(group)

    lines += _accuracy_section([row for row in rows if row["scenario"] == "accuracy"])
    lines += against_published.section(rows)
    lines += lower_precision.section(rows, environment)
    lines += latency.section(rows)
    lines += data_parallel.section(rows)
    lines += _nodes_compared(nodes)
    ok = [row for row in rows if row["status"] == "ok"]
    timed = [row for row in timing if row["status"] == "ok"]
    if timed:
        lines += ["", "## Step times", "",
                  "Pooled over the steady segments of the cell's processes: each process's step times are cut"
                  " where they settle (PELT changepoints), and its class says how it got there (`flat`: one level"
                  " throughout; `warmup`: slower steps first, dropped; `slowdown`: faster steps first, dropped;"
                  " `no steady state`: still changing in its last quarter, left out while another process"
                  " settled). The 95% interval of the median resamples processes, then steps within them. p90"
                  " and p99 are the latencies of a batch for inference, given where at least"
                  f" {TAIL_OBSERVATIONS} steady steps lie beyond them ({steps_for_percentile(90):,} steps for"
                  f" p90, {steps_for_percentile(99):,} for p99: an inference cell at batch 1, or of a latency"
                  " sweep, times that many calls in each process). *processes run* says how many measured"
                  " the cell and why that many: its interval came within the target, or its budget was spent"
                  " first; a process run during one of the machine's slow spells (see *Machine speed*) is"
                  " left out and measured again.", ""]
        body = [
            [
                *_cell_columns(row),
                f"{row['processes']} x {row['n'] // max(row['processes'], 1)}", processes(row), steady_state(row),
                format_seconds(row["median_s"]),
                f"{format_seconds(row['ci_low_s'])} - {format_seconds(row['ci_high_s'])}"
                if row.get("ci_low_s") is not None else "",
                format_seconds(row["iqr_s"]),
                format_optional_seconds(row.get("p90_s")) if row["scenario"] == "infer" else "",
                format_optional_seconds(row.get("p99_s")) if row["scenario"] == "infer" else "",
                format_count(row["throughput"]), _optional(row["gflops"], ".3g"),
                _optional(row.get("peak_percent"), ".1f"),
                row.get("verification", ""),
            ]
            for row in timed
        ]
        lines += _table([*_CELL_HEADER, "processes x steps", "processes run", "steady state", "median", "95% CI", "IQR",
                         "p90", "p99", "samples/s", "GFLOP/s", "% of peak", "verify"], body)
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
                format_optional_seconds(row["import_s"]), format_optional_seconds(row["build_s"]), _first_step(row),
                _break_even(row), _optional(row["cores_used"], ".2f"),
                _optional(None if row.get("cpu_utilisation") is None else 100 * row["cpu_utilisation"], ".0f"),
                format_bytes(row["peak_rss_bytes"] or 0),
                "" if row.get("memory_growth_bytes") is None else format_bytes(row["memory_growth_bytes"]),
            ]
            for row in ok
        ]
        lines += _table([*_CELL_HEADER, "import", "build", "first step", "compiling pays off after", "cores used",
                         "% of allowed cores", "peak RSS", "memory growth"], body)
        warned = [(row, stability_warnings(row)) for row in ok]
        warned = [(row, warnings) for row, warnings in warned if warnings]
        if warned:
            lines += ["", "## Stability warnings", ""]
            lines += [f"- {' '.join(_cell_columns(row))}: {warning}"
                      for row, warnings in warned for warning in warnings]
    lines += machine.lines(run.get("canary") or [])
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", "## Cells without a time", ""]
        body = [[row["framework"], row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"]),
                 row["status"], row["message"].replace("|", "\\|").replace("\n", " ")] for row in failed]
        lines += _table(["framework", "workload", "scenario", "batch", "threads", "status", "why"], body)
    if capabilities:
        from dlarena.report.capabilities import matrix

        lines += ["", "## Capabilities", "",
                  "What each framework of the run can do, as `dlarena capabilities` last measured it on this"
                  " database (each answer with the framework version it asked):", "", *matrix(capabilities)]
    return "\n".join(lines) + "\n"
