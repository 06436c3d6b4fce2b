"""The HTML report's charts as Vega-Lite specifications, built with Altair from report/figures' records.

Each chart's marks of cells are a layer named ``cells`` (Vega draws it as the SVG group
``cells_marks``, where the browser tests count them): one mark per cell behind the chart, a time
where the cell has one and its status, in words, where it does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt

from dlarena.report.figures import Group, Record, band

Spec = dict[str, Any]
# The layer whose marks stand one for each cell of the chart (see the module's docstring).
CELLS_LAYER = "cells"
WIDTH = 420  # px: two charts side by side on a laptop screen
NARROW = 300  # px: a chart with a legend beside it, still two side by side
ROW_HEIGHT = 22  # px per framework on a categorical axis
STATUS_COLOUR = "#b45309"  # amber: a cell without a time
INVALID_COLOUR = "#9ca3af"  # grey: a struck-out (mismatched) time


def _data(records: Sequence[Record]) -> Any:
    """Inline data: the page holds every figure behind its charts, and reads nothing else."""
    return alt.Data(values=list(records))  # type: ignore[no-untyped-call]  # Altair's schema classes are untyped


def _height(records: Sequence[Record]) -> int:
    return max(60, ROW_HEIGHT * len({record["framework"] for record in records}))


def _spec(chart: alt.TopLevelMixin) -> Spec:
    spec: Spec = chart.to_dict()
    return spec


def step_time(group: Group) -> Spec:
    """Median step time per framework with its 95% interval, fastest on top; a cell without a time
    shows its status at the axis's start."""
    records = group.records
    timed = [record for record in records if record["timed"]]
    order = [record["framework"] for record in sorted(timed, key=lambda r: r["median_s"])]
    order += [record["framework"] for record in records if not record["timed"]]
    start = min((record["ci_low_s"] or record["median_s"] for record in timed), default=1e-3) / 1.5
    data = [{**record, "x": record["median_s"] if record["timed"] else start,
             "label": "" if record["timed"] else record["status"]} for record in records]
    base = alt.Chart(_data(data)).encode(
        y=alt.Y("framework:N", sort=order, title=None))
    x = alt.X("x:Q", scale=alt.Scale(type="log"), title="median step time (s, log scale)",
              axis=alt.Axis(tickCount=6, labelOverlap="greedy"))
    tooltip = [alt.Tooltip("framework:N"), alt.Tooltip("median_s:Q", title="median (s)", format=".3~g"),
               alt.Tooltip("ci_low_s:Q", title="95% CI low (s)", format=".3~g"),
               alt.Tooltip("ci_high_s:Q", title="95% CI high (s)", format=".3~g"),
               alt.Tooltip("status:N"), alt.Tooltip("flags:N")]
    interval = base.transform_filter("datum.timed && datum.ci_low_s != null").mark_rule(color="#374151").encode(
        x=alt.X("ci_low_s:Q", scale=alt.Scale(type="log")), x2="ci_high_s:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x=x, color=alt.condition("datum.valid", alt.value("#1d4ed8"),
                                 alt.value(INVALID_COLOUR) if timed else alt.value(STATUS_COLOUR)),
        shape=alt.condition("datum.timed", alt.value("circle"), alt.value("diamond")), tooltip=tooltip)
    statuses = base.transform_filter("!datum.timed").mark_text(align="left", dx=8, color=STATUS_COLOUR).encode(
        x=x, text="label:N")
    layers = [interval] if any(record["ci_low_s"] is not None for record in timed) else []
    layers.append(points.properties(name=CELLS_LAYER))
    if len(timed) < len(records):  # a layer without data makes Vega warn of an infinite extent
        layers.append(statuses)
    layered = alt.layer(*layers)
    return _spec(layered.properties(title=group.title, width=WIDTH, height=_height(records)))


def thread_scaling(group: Group) -> Spec:
    """Shi et al.'s figure: time per mini-batch (log) against threads, and the speed-up against the
    fewest threads, one line per framework."""
    data = _data(group.records)
    threads = alt.X("threads:O", title="threads")
    colour = alt.Color("framework:N", title="framework")
    tooltip = ["framework:N", "threads:O", alt.Tooltip("median_s:Q", format=".3~g"),
               alt.Tooltip("speedup:Q", format=".2f")]
    time_lines = alt.Chart(data).mark_line(point=False).encode(
        x=threads, y=alt.Y("median_s:Q", scale=alt.Scale(type="log"), title="time per mini-batch (s, log)"),
        color=colour)
    time_points = alt.Chart(data).mark_point(filled=True).encode(
        x=threads, y=alt.Y("median_s:Q", scale=alt.Scale(type="log")), color=colour, tooltip=tooltip)
    time_chart = alt.layer(time_lines, time_points.properties(name=CELLS_LAYER)).properties(
        title=f"{group.title}: time", width=WIDTH // 1.4, height=240)
    speedup = alt.Chart(data).mark_line(point=True).encode(
        x=threads, y=alt.Y("speedup:Q", title="speed-up over the fewest threads"), color=colour, tooltip=tooltip)
    ideal = alt.Chart(data).mark_line(strokeDash=[4, 4], color="#9ca3af").encode(
        x=threads, y="threads:Q", detail="framework:N")
    speedup_chart = alt.layer(ideal, speedup).properties(
        title=f"{group.title}: speed-up (dashed: ideal)", width=WIDTH // 1.4, height=240)
    return _spec(alt.hconcat(time_chart, speedup_chart).resolve_scale(color="shared"))


def batch_scaling(group: Group) -> Spec:
    """Throughput against batch size, one line per framework."""
    data = _data(group.records)
    encoding = {"x": alt.X("batch_size:Q", scale=alt.Scale(type="log", base=2), title="batch size"),
                "y": alt.Y("throughput:Q", title="samples per second"), "color": alt.Color("framework:N")}
    lines = alt.Chart(data).mark_line().encode(**encoding)
    points = alt.Chart(data).mark_point(filled=True).encode(
        **encoding, tooltip=["framework:N", "batch_size:Q", alt.Tooltip("throughput:Q", format=",.3~g")])
    return _spec(alt.layer(lines, points.properties(name=CELLS_LAYER)).properties(
        title=f"{group.title}: throughput", width=WIDTH, height=240))


def latency_throughput(group: Group) -> Spec:
    """A batch's median latency against the samples per second it serves, one line per framework
    through its batch sizes, each point labelled with its batch; p90 and p99 in the tooltip."""
    data = _data(sorted(group.records, key=lambda record: (record["framework"], record["batch_size"])))
    encoding = {"x": alt.X("throughput:Q", title="samples per second"),
                "y": alt.Y("median_s:Q", scale=alt.Scale(type="log"), title="latency of a batch (s, median)"),
                "color": alt.Color("framework:N"), "order": alt.Order("batch_size:Q")}
    lines = alt.Chart(data).mark_line().encode(**encoding)
    points = alt.Chart(data).mark_point(filled=True).encode(
        **encoding, tooltip=["framework:N", "batch_size:Q", alt.Tooltip("throughput:Q", format=",.3~g"),
                             alt.Tooltip("median_s:Q", format=".3~g"), alt.Tooltip("p90_s:Q", format=".3~g"),
                             alt.Tooltip("p99_s:Q", format=".3~g")])
    labels = alt.Chart(data).mark_text(dx=6, dy=-6, fontSize=10).encode(
        x="throughput:Q", y="median_s:Q", text="batch_size:Q", color=alt.Color("framework:N", legend=None))
    return _spec(alt.layer(lines, points.properties(name=CELLS_LAYER), labels).properties(
        title=f"{group.title}: latency against throughput", width=WIDTH, height=240))


def accuracy_curve(group: Group) -> Spec:
    """Test accuracy against cumulative training time, one line per framework (its seeds as a band
    where there are several), with the target as a dashed rule."""
    colour = alt.Color("framework:N", title="framework")
    x = alt.X("time_s:Q", title="cumulative training time (s)")
    lines = alt.Chart(_data(group.records)).mark_line(point=True, opacity=0.85).encode(
        x=x, y=alt.Y("accuracy:Q", title="test accuracy", scale=alt.Scale(zero=False)), color=colour,
        detail="seed:N", tooltip=["framework:N", "seed:N", "epoch:Q", alt.Tooltip("time_s:Q", format=".3~g"),
                                  alt.Tooltip("accuracy:Q", format=".2%")])
    layers: list[alt.Chart] = []
    spread = [record for record in band(group.records) if record["seeds"] > 1]
    if spread:
        layers.append(alt.Chart(_data(spread)).mark_area(opacity=0.2).encode(
            x=x, y="low:Q", y2="high:Q", color=colour))
    layers.append(lines.properties(name=CELLS_LAYER))
    targets = sorted({record["target"] for record in group.records if record.get("target") is not None})
    if targets:
        layers.append(alt.Chart(_data([{"target": target} for target in targets])).mark_rule(
            strokeDash=[6, 4], color="#dc2626").encode(y="target:Q"))
    return _spec(alt.layer(*layers).properties(title=f"{group.title}: test accuracy against training time",
                                               width=WIDTH, height=260))


def final_accuracy(group: Group) -> Spec:
    """Final test accuracy per framework with its range over seeds; a cell without one shows its status."""
    records = group.records
    trained = [record for record in records if record["timed"]]
    start = min((record["low"] for record in trained), default=0.0)
    data = [{**record, "x": record["accuracy"] if record["timed"] else start,
             "label": "" if record["timed"] else record["status"]} for record in records]
    order = [record["framework"] for record in sorted(trained, key=lambda r: -r["accuracy"])]
    order += [record["framework"] for record in records if not record["timed"]]
    base = alt.Chart(_data(data)).encode(y=alt.Y("framework:N", title=None, sort=order))
    x = alt.X("x:Q", title="final test accuracy (range over seeds)", scale=alt.Scale(zero=False),
              axis=alt.Axis(format="%"))
    spread = base.transform_filter("datum.timed").mark_rule().encode(x=alt.X("low:Q"), x2="high:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x=x, color=alt.condition("datum.timed", alt.value("#047857"), alt.value(STATUS_COLOUR)),
        tooltip=["framework:N", alt.Tooltip("accuracy:Q", format=".2%"), "seeds:Q", "status:N",
                 alt.Tooltip("time_to_target_s:Q", title="time to target (s)", format=".3~g")])
    statuses = base.transform_filter("!datum.timed").mark_text(align="left", dx=8, color=STATUS_COLOUR).encode(
        x=x, text="label:N")
    layers = [spread] if trained else []
    layers.append(points.properties(name=CELLS_LAYER))
    if len(trained) < len(records):
        layers.append(statuses)
    return _spec(alt.layer(*layers).properties(
        title=f"{group.title}: final accuracy", width=WIDTH, height=_height(records)))


def costs(group: Group) -> Spec:
    """Import, build and first step stacked per framework; the subtitle says when compiling pays off."""
    totals: dict[str, float] = {}
    for record in group.records:
        totals[record["framework"]] = totals.get(record["framework"], 0.0) + record["seconds"]
    order = sorted(totals, key=lambda name: -totals[name])
    chart = alt.Chart(_data(group.records)).mark_bar().encode(
        y=alt.Y("framework:N", title=None, sort=order),
        x=alt.X("sum(seconds):Q", title="seconds before the timed steps"),
        color=alt.Color("phase:N", sort=["import", "build", "first step"], title="one-off cost"),
        order=alt.Order("order:Q"),
        tooltip=["framework:N", "phase:N", alt.Tooltip("seconds:Q", format=".3~g"),
                 alt.Tooltip("pays_off:N", title="break-even")])
    # A compiled framework's break-even, under the title: where a reader looks for what the bars mean.
    subtitle = [f"{name}: {record['pays_off']}"
                for name, record in {r["framework"]: r for r in group.records if r["pays_off"]}.items()]
    title = alt.TitleParams(f"{group.title}: one-off costs", subtitle=subtitle) if subtitle else \
        f"{group.title}: one-off costs"
    return _spec(chart.properties(name=CELLS_LAYER, title=title, width=NARROW, height=_height(group.records)))


def resources(group: Group) -> Spec:
    """Peak resident memory, and cores used against the cores allowed (the threads), per framework."""
    data = _data(group.records)
    y = alt.Y("framework:N", title=None)
    memory = alt.Chart(data).mark_bar(color="#6d28d9").encode(
        y=y, x=alt.X("peak_rss_mib:Q", title="peak RSS (MiB)"),
        tooltip=["framework:N", alt.Tooltip("peak_rss_mib:Q", format=",.0f"),
                 alt.Tooltip("peak_percent:Q", title="% of machine peak", format=".1f")],
    ).properties(name=CELLS_LAYER, width=WIDTH // 2, height=_height(group.records), title="memory")
    cores = alt.Chart(data).mark_bar().encode(
        y=y, x=alt.X("cores_used:Q", title="cores used (tick: allowed)"),
        color=alt.condition("datum.over_threads", alt.value("#dc2626"), alt.value("#0e7490")),
        tooltip=["framework:N", alt.Tooltip("cores_used:Q", format=".2f"), "cores_allowed:Q", "over_threads:N"])
    allowed = alt.Chart(data).mark_tick(color="#111827", thickness=2).encode(y=y, x="cores_allowed:Q")
    return _spec(alt.hconcat(memory, alt.layer(cores, allowed).properties(
        width=WIDTH // 2, height=_height(group.records), title="cores")).properties(title=group.title))


def machine_speed(group: Group) -> Spec:
    """The machine's speed after each process (the canary: 1 is the run's typical speed), a slow spell's
    processes in red, a dashed rule at the typical speed."""
    data = _data(group.records)
    x = alt.X("started_at:T", title="process started")
    line = alt.Chart(data).mark_line(color="#9ca3af").encode(x=x, y=alt.Y("speed:Q", title="speed (1: typical)"))
    points = alt.Chart(data).mark_point(filled=True).encode(
        x=x, y="speed:Q", color=alt.condition("datum.slow_spell", alt.value("#dc2626"), alt.value("#0e7490")),
        tooltip=["process:N", alt.Tooltip("speed:Q", format=".2f"), "slow_spell:N"]).properties(name=CELLS_LAYER)
    typical = alt.Chart(_data([{"speed": 1.0}])).mark_rule(strokeDash=[4, 4], color="#111827").encode(y="speed:Q")
    return _spec(alt.layer(line, points, typical).properties(width=2 * WIDTH, height=160, title=group.title))


VERDICT_COLOURS = {"faster": "#047857", "slower": "#b91c1c", "same": "#6b7280", "withheld": "#a16207",
                   "not compared": STATUS_COLOUR}


def forest(title: str, records: Sequence[Record]) -> Spec:
    """A forest plot: each compared cell's ratio with its 95% interval, coloured by verdict, against
    a dashed line at 1 (no difference); a cell that was not compared shows why."""
    compared = [record for record in records if record["compared"]]
    start = min((record["ci_low"] for record in compared), default=0.5) / 1.3
    data = [{**record, "x": record["ratio"] if record["compared"] else start,
             "label_text": "" if record["compared"] else record["describe"]} for record in records]
    order = [record["label"] for record in records]
    base = alt.Chart(_data(data)).encode(y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=360)))
    x = alt.X("x:Q", scale=alt.Scale(type="log"), title="ratio of median step times (B / A; log scale)")
    colour = alt.Color("verdict:N", title="verdict", scale=alt.Scale(domain=list(VERDICT_COLOURS),
                                                                     range=list(VERDICT_COLOURS.values())))
    layers: list[alt.Chart] = []
    if compared:
        layers.append(base.transform_filter("datum.compared").mark_rule().encode(
            x=alt.X("ci_low:Q", scale=alt.Scale(type="log")), x2="ci_high:Q", color=colour))
    layers.append(base.mark_point(filled=True, size=70).encode(
        x=x, color=colour, tooltip=["label:N", alt.Tooltip("ratio:Q", format=".3f"),
                                    alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"),
                                    "describe:N"]).properties(name=CELLS_LAYER))
    if len(compared) < len(records):
        layers.append(base.transform_filter("!datum.compared").mark_text(align="left", dx=8,
                                                                        color=STATUS_COLOUR).encode(
            x=x, text="label_text:N"))
    layers.append(alt.Chart(_data([{"one": 1.0}])).mark_rule(strokeDash=[4, 4], color="#111827").encode(
        x=alt.X("one:Q", scale=alt.Scale(type="log"))))
    return _spec(alt.layer(*layers).properties(title=title, width=WIDTH + 120, height=_height(
        [{"framework": record["label"]} for record in records])))
