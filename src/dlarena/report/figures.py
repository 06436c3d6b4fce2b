"""The data behind each chart of the HTML report: plain records, one per mark, read from a run's rows.

Every function here is pure over the rows of ``Store.cell_rows`` (annotated by report/annotate and
report/costs) and, for the training curves, the ok processes' accuracy records: no clock, no
framework, no plotting library. report/charts turns the records into Vega-Lite; the tests check the
records against a database they write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlarena.measure.compare import Comparison
from dlarena.report.annotate import unstable
from dlarena.report.comparison import FrameworkRanking, PairComparison
from dlarena.report.markdown import compile_cache_hit, training
from dlarena.report.ranking import CONFIGURATION, STEP_TIME, UNSHOWN, Ranking

Row = dict[str, Any]
Record = dict[str, Any]
# The one-off costs of a process, in the order they happen, each with the row's column.
COST_PHASES = (("import", "import_s"), ("build", "build_s"), ("first step", "first_step_s"))
# What each flag of a cell means, shown on hover wherever the flag is.
FLAG_EXPLANATIONS = {
    "unstable": "the spread of this cell's step times exceeded a stability threshold: see the stability warnings",
    "over threads": "the framework kept more cores busy than its thread count allowed",
    "mismatch": "dlarena verify found that this framework does not compute the same numbers for this network;"
                " its time is invalid",
    "unverified": "dlarena verify has not checked this framework on this network",
    "cached": "the first step's compiled code came from an earlier process's compile cache",
}
# Axes beside the workload and scenario that name a chart only where the run varies them.
SWEEP_AXES = ("device", "precision", "batch_size", "threads", "replicas", "node")


@dataclass(frozen=True)
class Group:
    """The records of one chart, with the configuration they share."""

    key: tuple[Any, ...]
    title: str
    records: list[Record] = field(default_factory=list)

    @property
    def slug(self) -> str:
        """A stable identifier for the chart's element and its static file."""
        # an axis at its unshown value (one replica, this machine) is None in the key and left out
        return "-".join(str(part) for part in self.key if part is not None).replace(" ", "_").replace("/", "_")


def timing_rows(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row["scenario"] != "accuracy"]


def accuracy_rows(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row["scenario"] == "accuracy"]


def flags(row: Row) -> list[str]:
    """What a reader must know about a cell beside its figure, as FLAG_EXPLANATIONS' keys."""
    marks = []
    verification = row.get("verification")
    if verification == "mismatch":
        marks.append("mismatch")
    elif verification == "unverified":
        marks.append("unverified")
    if row["status"] == "ok" and unstable(row):
        marks.append("unstable")
    if row.get("over_threads"):
        marks.append("over threads")
    if row["status"] == "ok" and compile_cache_hit(row):
        marks.append("cached")
    return marks


def _timed(row: Row) -> bool:
    return row["status"] == "ok" and row.get("median_s") is not None


def varying_axes(rows: Sequence[Row]) -> list[str]:
    return [axis for axis in SWEEP_AXES if len({row.get(axis) for row in rows}) > 1]


def _title(row: Row, axes: Iterable[str]) -> str:
    parts = [str(row["workload"]), str(row["scenario"])]
    for axis in axes:
        value = row[axis]
        parts.append(f"batch {value}" if axis == "batch_size" else f"{value} thread{'s' * (value != 1)}"
                     if axis == "threads" else f"node {value}" if axis == "node"
                     else f"{value} replica{'s' * (value != 1)}" if axis == "replicas" else str(value))
    return ", ".join(parts)


def _grouped(rows: Sequence[Row], axes: Sequence[str], title_axes: Sequence[str],
             record: Callable[[Row], Record | None]) -> list[Group]:
    """Rows grouped by ``axes`` (in the rows' order), each group's records made by ``record``."""
    groups: dict[tuple[Any, ...], Group] = {}
    for row in rows:
        key = tuple(None if row.get(axis) == UNSHOWN.get(axis, ...) else row.get(axis) for axis in axes)
        made = record(row)
        if made is None:
            continue
        if key not in groups:
            groups[key] = Group(key, _title(row, title_axes))
        groups[key].records.append(made)
    return list(groups.values())


# --- step times ----------------------------------------------------------------------------------


def step_time_record(row: Row) -> Record:
    """One cell of a step-time chart: its median and interval, or its status where it has no time."""
    timed = _timed(row)
    return {
        "framework": row["framework"], "status": row["status"], "timed": timed,
        "valid": timed and row.get("verification") != "mismatch",
        "median_s": row["median_s"] if timed else None,
        "ci_low_s": row.get("ci_low_s") if timed else None, "ci_high_s": row.get("ci_high_s") if timed else None,
        "threads": row["threads"], "batch_size": row["batch_size"], "flags": ", ".join(flags(row)),
    }


def step_times(rows: Sequence[Row]) -> list[Group]:
    """One chart per configuration (as the headline ranks them): every framework's cell, time or status."""
    timing = timing_rows(rows)
    return _grouped(timing, CONFIGURATION, varying_axes(timing), step_time_record)


# --- sweeps --------------------------------------------------------------------------------------


def _sweep(rows: Sequence[Row], axis: str) -> list[Group]:
    """Timed cells grouped by every configuration axis but ``axis``; only groups that vary ``axis``."""
    timing = [row for row in timing_rows(rows) if _timed(row) and row.get("verification") != "mismatch"]
    others = [name for name in CONFIGURATION if name != axis]
    groups = _grouped(timing, others, [name for name in varying_axes(timing) if name != axis], lambda row: {
        "framework": row["framework"], "threads": row["threads"], "batch_size": row["batch_size"],
        "median_s": row["median_s"], "ci_low_s": row.get("ci_low_s"), "ci_high_s": row.get("ci_high_s"),
        "throughput": row.get("throughput"), "p90_s": row.get("p90_s"), "p99_s": row.get("p99_s"),
    })
    return [group for group in groups if len({record[axis] for record in group.records}) > 1]


def thread_scaling(rows: Sequence[Row]) -> list[Group]:
    """Shi et al.'s Figures 3-8: time per mini-batch against threads, and the speed-up over the fewest
    threads each framework ran (1 in a full sweep), per network, scenario and batch size."""
    groups = _sweep(rows, "threads")
    for group in groups:
        fewest: dict[str, Record] = {}
        for record in group.records:
            best = fewest.get(record["framework"])
            if best is None or record["threads"] < best["threads"]:
                fewest[record["framework"]] = record
        for record in group.records:
            base = fewest[record["framework"]]
            record["speedup"] = base["median_s"] / record["median_s"]
            record["speedup_base_threads"] = base["threads"]
    return groups


def batch_scaling(rows: Sequence[Row]) -> list[Group]:
    """Throughput (samples per second) against batch size, per network, scenario and thread count."""
    return _sweep(rows, "batch_size")


def latency_throughput(rows: Sequence[Row]) -> list[Group]:
    """Inference's trade-off: a batch's latency against the samples per second it serves, one point per
    batch size, per network and thread count (report/latency.py is the same as a table)."""
    scenario = CONFIGURATION.index("scenario")
    return [Group(("latency", *group.key), group.title, group.records)  # its own slug beside batch_scaling's
            for group in _sweep(rows, "batch_size") if group.key[scenario] == "infer"]


# --- training to accuracy ------------------------------------------------------------------------


def accuracy_curves(rows: Sequence[Row], processes: Callable[[int], Sequence[Row]]) -> list[Group]:
    """Test accuracy after each epoch against the cumulative training time, one line per seed.

    ``processes(cell_id)`` gives a cell's ok worker results (``Store.ok_processes``). The training
    time counts steps and data handling, as the time to target does (measure/aggregate), not testing.
    """
    groups: dict[tuple[Any, ...], Group] = {}
    for row in accuracy_rows(rows):
        if row["status"] != "ok":
            continue
        key = (row["workload"], row["device"], row["precision"], row["batch_size"], row["threads"])
        group = groups.setdefault(key, Group(key, str(row["workload"])))
        for seed, process in enumerate(processes(row["cell_id"])):
            record = process.get("accuracy") or {}
            elapsed = 0.0
            for epoch in record.get("epochs", []):
                elapsed += float(epoch["train_s"]) + float(epoch.get("data_s") or 0.0)
                group.records.append({
                    "framework": row["framework"], "seed": seed, "epoch": epoch["epoch"], "time_s": elapsed,
                    "accuracy": epoch["test_accuracy"], "target": record.get("target_accuracy"),
                })
    return list(groups.values())


def band(records: Sequence[Record]) -> list[Record]:
    """Per framework and epoch: the accuracy's range over seeds and the mean training time to it."""
    by_epoch: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for record in records:
        by_epoch[(record["framework"], record["epoch"])].append(record)
    return [{"framework": framework, "epoch": epoch, "time_s": sum(r["time_s"] for r in seeds) / len(seeds),
             "low": min(r["accuracy"] for r in seeds), "high": max(r["accuracy"] for r in seeds), "seeds": len(seeds)}
            for (framework, epoch), seeds in by_epoch.items()]


def final_accuracy(rows: Sequence[Row]) -> list[Group]:
    """Per accuracy workload, each framework's final test accuracy over its seeds, or its status."""
    def record(row: Row) -> Record:
        figures = training(row) if row["status"] == "ok" else {}
        return {
            "framework": row["framework"], "status": row["status"], "timed": bool(figures),
            "accuracy": figures.get("accuracy"), "low": figures.get("accuracy_min"),
            "high": figures.get("accuracy_max"), "seeds": figures.get("seeds"),
            "target": figures.get("target_accuracy"), "time_to_target_s": figures.get("time_to_target_s"),
        }

    accuracy = accuracy_rows(rows)
    return _grouped(accuracy, ("workload", "device", "precision", "batch_size", "threads"),
                    [axis for axis in varying_axes(accuracy) if axis != "batch_size"], record)


# --- costs and resources -------------------------------------------------------------------------


def costs(rows: Sequence[Row]) -> list[Group]:
    """Per configuration, each ok cell's one-off costs as stacked segments (one record per segment)."""
    groups = []
    timing = timing_rows(rows)
    for group in _grouped(timing, CONFIGURATION, varying_axes(timing), lambda row: row if row["status"] == "ok"
                          else None):
        records = []
        for row in group.records:
            steps = row.get("break_even_steps")
            pays_off = "" if steps is None else (
                f"compiling never pays off (vs {row['eager_counterpart']})" if steps == float("inf")
                else f"compiling pays off after {round(steps):,} steps (vs {row['eager_counterpart']})")
            records += [{"framework": row["framework"], "phase": phase, "order": order, "seconds": row.get(column),
                         "pays_off": pays_off, "flags": ", ".join(flags(row))}
                        for order, (phase, column) in enumerate(COST_PHASES) if row.get(column) is not None]
        groups.append(Group(group.key, group.title, records))
    return groups


def resources(rows: Sequence[Row]) -> list[Group]:
    """Per configuration, each ok cell's peak memory, cores used against allowed, and % of peak."""
    timing = timing_rows(rows)
    return _grouped(timing, CONFIGURATION, varying_axes(timing), lambda row: None if row["status"] != "ok" else {
        "framework": row["framework"], "peak_rss_mib": (row.get("peak_rss_bytes") or 0) / 2**20,
        "cores_used": row.get("cores_used"), "cores_allowed": row["threads"],
        "peak_percent": row.get("peak_percent"), "over_threads": bool(row.get("over_threads")),
    })


# --- the headline --------------------------------------------------------------------------------


def headline(rankings: Sequence[Ranking]) -> list[Record]:
    """Per configuration: the fastest framework, the next one, the ratio between them with its 95%
    interval, and whether the difference is real (``faster``), not (``same``), or cannot be told
    (``withheld``: too few processes)."""
    axes = [axis for axis in SWEEP_AXES if len({ranking.row.get(axis) for ranking in rankings}) > 1]
    records = []
    for ranking in rankings:
        valid = [entry for entry in ranking.entries
                 if entry.median is not None and entry.row.get("verification") != "mismatch"]
        record: Record = {
            "configuration": _title(ranking.row, axes), "measure": ranking.measure,
            "unit": "a step" if ranking.measure == STEP_TIME else "to the target",
            "fastest": ranking.baseline, "fastest_s": valid[0].median if valid else None,
            "next": None, "next_s": None, "times": None, "ci_low": None, "ci_high": None, "verdict": None,
        }
        if len(valid) > 1 and valid[1].comparison is not None:
            comparison = valid[1].comparison
            # The next one's ratio over the fastest, read as "the fastest is N times faster".
            record.update({"next": valid[1].framework, "next_s": valid[1].median, "times": comparison.ratio,
                           "ci_low": comparison.ci_low, "ci_high": comparison.ci_high,
                           "verdict": "withheld" if comparison.withheld else "faster" if comparison.real
                           else "same"})
        records.append(record)
    return records


# --- a comparison --------------------------------------------------------------------------------


def _cell_label(row: Row) -> str:
    return f"{row['workload']} {row['scenario']}, batch {row['batch_size']}, {row['threads']}t"


def forest(found: PairComparison | FrameworkRanking) -> list[Record]:
    """One record per compared cell: B's median over A's (or a framework's over the fastest's or the
    baseline's) with its 95% interval and verdict; a cell that could not be compared says why."""
    records: list[Record] = []
    if isinstance(found, PairComparison):
        for item in found.comparisons:
            a, b, result = item.a, item.b, item.result
            name = a["framework"] if a["framework"] == b["framework"] else f"{a['framework']} / {b['framework']}"
            records.append(_forest_record(f"{name}: {_cell_label(a)}", result, a.get("median_s"),
                                          b.get("median_s"), item.reason))
        return records
    for ranking in found.rankings:
        reference = next((entry.median for entry in ranking.entries if entry.framework == ranking.baseline), None)
        for entry in ranking.entries:
            if entry.framework == ranking.baseline and entry.median is not None:
                continue  # the reference itself: the dashed line at 1
            reason = "" if entry.comparison else entry.note or (
                f"no {found.baseline} time to compare with" if ranking.missing_baseline else "not compared")
            records.append(_forest_record(f"{entry.framework}: {_cell_label(ranking.row)}", entry.comparison,
                                          reference, entry.median, reason))
    return records


def _forest_record(label: str, result: Comparison | None, a_s: float | None, b_s: float | None,
                   reason: str) -> Record:
    return {
        "label": label, "compared": result is not None, "a_s": a_s, "b_s": b_s,
        "ratio": result.ratio if result else None, "ci_low": result.ci_low if result else None,
        "ci_high": result.ci_high if result else None, "p_value": result.p_value if result else None,
        "verdict": result.verdict if result else "not compared",
        "describe": result.describe() if result else f"not compared: {reason}",
    }
