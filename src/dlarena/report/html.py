"""The HTML report of a run: one self-contained file (every script, style and chart inline; nothing
fetched), rendered from a Jinja2 template over report/figures' records and report/charts' specs.

It tells what the Markdown report tells, in the order a reader asks: which framework is fastest
(the headline), the step times with their intervals, the sweeps (Shi et al.'s thread scaling, batch
size), training to accuracy, what each framework costs and uses, then every cell with its story
(status, flags, parity, the command that re-runs it) and the run's context.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import vl_convert

from dlarena.measure.canary import SLOW_SPELL_THRESHOLD
from dlarena.measure.compare import verdict_rule
from dlarena.report import charts, figures, machine, vega_bundle
from dlarena.report.annotate import processes, stability_warnings, steady_state
from dlarena.report.comparison import FrameworkRanking, PairComparison, tally, unmatched_note
from dlarena.report.figures import FLAG_EXPLANATIONS, Group
from dlarena.report.markdown import training
from dlarena.report.ranking import Ranking
from dlarena.report.ranking import tally as ranking_tally
from dlarena.report.units import format_bytes, format_optional_seconds, format_seconds
from dlarena.wording import counted

Row = dict[str, Any]
# The parity fields every framework reports (worker.Parity); details differ per framework and show
# per cell. A field whose value differs between the frameworks of one workload is highlighted.
PARITY_FIELDS = ("threads", "dtype", "execution", "layout", "denormals", "tf32", "cudnn_benchmark")
# Filters of the table of cells: (label, the row's column).
TABLE_FILTERS = (("framework", "framework"), ("workload", "workload"), ("scenario", "scenario"),
                 ("threads", "threads"), ("batch", "batch_size"), ("status", "status"))


@dataclass(frozen=True)
class Chart:
    """One chart of the page: where it goes, its Vega-Lite specification and the cells behind it."""

    section: str
    slug: str
    title: str
    spec: dict[str, Any]
    cells: int

    @property
    def element_id(self) -> str:
        return f"chart-{self.section}-{self.slug}"

    def spec_json(self) -> str:
        """The chart compiled to Vega here, once, rather than from Vega-Lite in the browser on every opening
        (measured: an eighth of the page's load time). "</" cannot appear inside a <script> element: the
        JSON's own escape keeps it out."""
        compiled = vl_convert.vegalite_to_vega(self.spec, vl_version=vega_bundle.VEGA_LITE_VERSION)
        return json.dumps(compiled, separators=(",", ":")).replace("</", "<\\/")


def _charts(section: str, groups: Sequence[Group], build: Callable[[Group], dict[str, Any]],
            cells: Callable[[Group], int] | None = None) -> list[Chart]:
    return [Chart(section, group.slug, group.title, build(group),
                  cells(group) if cells else len(group.records)) for group in groups]


def build_charts(rows: Sequence[Row], processes: Callable[[int], Sequence[Row]],
                 canary: Sequence[Row] = ()) -> list[Chart]:
    """Every chart of a run's report, in page order, grouped by their ``section``; ``canary`` the run's
    canary readings (Store.canary_readings)."""
    curves = figures.accuracy_curves(rows, processes)
    speed = [Group(("machine-speed",), "the machine's speed after each process (canary)",
                   machine.speed_points(canary))] if canary else []
    return [
        *_charts("steps", figures.step_times(rows), charts.step_time),
        *_charts("threads", figures.thread_scaling(rows), charts.thread_scaling),
        *_charts("batch", figures.batch_scaling(rows), charts.batch_scaling),
        *_charts("batch", figures.latency_throughput(rows), charts.latency_throughput),
        # the curves' marks: one line per seed of each framework
        *_charts("curves", curves, charts.accuracy_curve,
                 lambda group: len({(r["framework"], r["seed"]) for r in group.records})),
        *_charts("accuracy", figures.final_accuracy(rows), charts.final_accuracy),
        # one stacked segment per one-off cost of each cell
        *_charts("costs", figures.costs(rows), charts.costs),
        *_charts("resources", figures.resources(rows), charts.resources),
        *_charts("machine", speed, charts.machine_speed),
    ]


def _command(row: Row) -> str:
    return shlex.join(json.loads(row["command"])) if row.get("command") else ""


def _parity(row: Row) -> dict[str, Any]:
    parity: dict[str, Any] = json.loads(row.get("parity") or "{}")
    return parity


def table_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The table of cells: every cell with its figures, flags and the story behind it."""
    table = []
    for index, row in enumerate(rows):
        ok = row["status"] == "ok"
        trained = training(row) if ok and row["scenario"] == "accuracy" else {}
        median = row.get("median_s") if ok else None
        table.append({
            "index": index, "row": row, "ok": ok, "flags": figures.flags(row),
            "median": format_optional_seconds(median), "median_sort": "" if median is None else median,
            "interval": f"{format_seconds(row['ci_low_s'])} - {format_seconds(row['ci_high_s'])}"
            if ok and row.get("ci_low_s") is not None else "",
            "steady_state": steady_state(row) if ok else "",
            "processes": processes(row) if ok else "",
            "throughput": "" if not ok or row.get("throughput") is None else f"{row['throughput']:,.4g}",
            "import": format_optional_seconds(row.get("import_s")),
            "build": format_optional_seconds(row.get("build_s")),
            "first_step": format_optional_seconds(row.get("first_step_s")),
            "accuracy": f"{trained['accuracy']:.2%}" if trained else "",
            "accuracy_sort": trained.get("accuracy", ""),
            "peak_rss": format_bytes(row["peak_rss_bytes"]) if row.get("peak_rss_bytes") else "",
            "peak_rss_sort": row.get("peak_rss_bytes") or "",
            "cores_used": "" if row.get("cores_used") is None else f"{row['cores_used']:.2f}",
            "parity": json.dumps(_parity(row), indent=2, sort_keys=True), "command": _command(row),
        })
    return table


def parity_tables(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per workload, what each framework really ran with; a value that differs between them is marked."""
    by_workload: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        parity = _parity(row)
        if row["status"] == "ok" and parity:
            by_workload[row["workload"]].setdefault(row["framework"], parity)
    tables = []
    for workload, frameworks in by_workload.items():
        fields = [name for name in PARITY_FIELDS if any(parity.get(name) is not None for parity in frameworks.values())]
        differing = {name for name in fields if len({json.dumps(p.get(name)) for p in frameworks.values()}) > 1}
        body = [{"framework": framework, "values": [{"text": "" if parity.get(name) is None else str(parity[name]),
                                                     "differs": name in differing} for name in fields]}
                for framework, parity in frameworks.items()]
        tables.append({"workload": workload, "fields": fields, "rows": body, "differing": sorted(differing)})
    return tables


def capability_table(answers: Sequence[Row]) -> dict[str, Any]:
    """The capability matrix as the page shows it: a coloured cell per answer, its reason on hover."""
    from dlarena.probes.registry import PROBES
    from dlarena.probes.stated import CHECKED, stated
    from dlarena.report.capabilities import STATED_COLUMNS, cell_text, stated_cells

    frameworks = list(dict.fromkeys(answer["framework"] for answer in answers))
    probes = [name for name in PROBES if any(answer["probe"] == name for answer in answers)]
    by_pair = {(answer["framework"], answer["probe"]): answer for answer in answers}
    rows = [{"framework": framework, "cells": [
        {"outcome": (answer := by_pair.get((framework, probe)) or {}).get("outcome", "not asked"),
         "text": cell_text(answer or None).replace("*", ""),
         "detail": answer.get("message") or json.dumps(answer.get("figures") or {}, sort_keys=True)}
        for probe in probes], "stated": stated_cells(framework)} for framework in frameworks]
    return {"probes": [PROBES[name] for name in probes], "rows": rows, "stated_columns": STATED_COLUMNS,
            "stated_sources": sorted({entry.source for framework in frameworks
                                      if (entry := stated(framework)) is not None}), "stated_checked": CHECKED}


def context(run: Row, environment: Row) -> list[tuple[str, str]]:
    """The run's context as (term, description) pairs: what ran, where, with what."""
    peaks = run.get("peaks") or {}
    return [
        ("run", f"{run['id']}: suite {run['suite_name']} (version {run['suite_version']}), started"
                f" {run['started_at']}, {run['status']}"),
        ("command", shlex.join(["dlarena", *json.loads(run["argv"])[1:]])),
        ("dlarena", str(run["code_version"])),
        ("machine", f"{environment.get('cpu_model', '?')}, {counted(environment.get('cores', 0), 'core')},"
                    f" {format_bytes(environment.get('memory_bytes', 0))}, {environment.get('os', '?')}"),
        ("Python", f"{environment.get('python', '?')}, NumPy BLAS {environment.get('numpy_blas', '?')}"),
        ("frameworks", ", ".join(f"{name} {version}" for name, version in
                                 sorted(environment.get("frameworks", {}).items())) or "none recorded"),
        ("machine peak", ", ".join(f"{counted(threads, 'thread')}: {peak['gflops']:.1f} GFLOP/s"
                                   for threads, peak in sorted(peaks.items())) or "not probed for this run"),
        ("processes per cell", str(run.get("repetitions", 1)) if not run.get("target_ci") else
         f"a pilot of {run.get('repetitions', 1)}, then more until the median's 95% interval is within"
         f" {run['target_ci']:.0%} or {run['max_processes']} ran"),
    ]


def warnings(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each cell's stability warnings (measure/aggregate's sentences, which say what to do)."""
    return [{"cell": f"{row['framework']} {row['workload']} {row['scenario']} batch {row['batch_size']}"
                     f" {counted(row['threads'], 'thread')}", "warning": warning}
            for row in rows if row["status"] == "ok" for warning in stability_warnings(row)]


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("dlarena.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters["seconds"] = format_optional_seconds
    environment.filters["percent"] = lambda value: "" if value is None else f"{value:.2%}"
    return environment


def render(run: Row, environment: Row, rows: Sequence[Row], rankings: Sequence[Ranking],
           processes: Callable[[int], Sequence[Row]], capabilities: Sequence[Row] = ()) -> str:
    """The page of one run: ``rows`` annotated as for the Markdown report, ``rankings`` its headline,
    ``processes(cell_id)`` a cell's ok worker results (the training curves)."""
    sections: dict[str, list[Chart]] = defaultdict(list)
    for chart in build_charts(rows, processes, run.get("canary") or ()):
        sections[chart.section].append(chart)
    filters = [(label, key, sorted({str(row[key]) for row in rows}, key=_natural)) for label, key in TABLE_FILTERS]
    return _page("report.html.j2", str(run["code_version"]), title=f"dlarena run {run['id']}", run=run,
                 headline=figures.headline(rankings), sections=sections, table=table_rows(rows), filters=filters,
                 parity=parity_tables(rows), context=context(run, environment), warnings=warnings(rows),
                 explanations=FLAG_EXPLANATIONS, capabilities=capability_table(capabilities),
                 slow_spell_threshold=SLOW_SPELL_THRESHOLD)


def render_comparison(found: PairComparison | FrameworkRanking, code_version: str) -> str:
    """`dlarena compare --format html`: the forest plot of every compared cell, its table and verdicts."""
    records = figures.forest(found)
    if isinstance(found, PairComparison):
        title = f"{found.label_b} (B) against {found.label_a} (A)"
        lead = "Ratio: B's median step time over A's (below 1: B is faster), with its 95% bootstrap interval."
        label_a, label_b, differences = f"A: {found.label_a}", f"B: {found.label_b}", list(found.differences)
        closing, unmatched = tally(found.comparisons), unmatched_note(found.unmatched) if found.unmatched else ""
    else:
        reference = found.baseline or "the fastest"
        title = f"{', '.join(found.frameworks)} in run {found.run_id}, against {reference}"
        lead = (f"Ratio: each framework's median step time over {reference}'s (below 1: faster), with its 95%"
                " bootstrap interval.")
        label_a, label_b, differences = reference, "framework", []
        closing, unmatched = ranking_tally(found.rankings, found.frameworks, found.baseline), ""
    chart = Chart("forest", "comparison", title, charts.forest(title, records), len(records))
    return _page("comparison.html.j2", code_version, title=title, lead=lead, differences=differences,
                 charts=[chart], table=records, label_a=label_a, label_b=label_b, tally=closing,
                 unmatched=unmatched)


def _page(template: str, code_version: str, **values: Any) -> str:
    """A page from ``template`` with what every page inlines: its style, its script and the chart libraries."""
    env = _environment()
    loader = env.loader
    assert loader is not None  # _environment sets it
    return env.get_template(template).render(
        generator=f"dlarena {code_version}", verdict_rule=verdict_rule().replace("`", ""),
        style=loader.get_source(env, "report.css")[0], script=loader.get_source(env, "report.js")[0],
        libraries=vega_bundle.javascript(), **values)


def _natural(text: str) -> tuple[int, Any]:
    """Numbers in numeric order (2 before 16), then words."""
    return (0, int(text)) if text.isdigit() else (1, text)
