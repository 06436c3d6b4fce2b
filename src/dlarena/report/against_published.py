"""The report's section that sets a run's times beside the studies' published ones (spec/published.py).

The studies timed GPUs of their day with frameworks of their day; seconds do not carry over to this
machine, ratios between frameworks carry over better. So each published table that a run covers (same
network, scenario and batch size) is shown as ratios to one reference framework: the published ratio
in each column of the study's table beside the measured one, and, per column, whether the order of
the frameworks changed since.

Only the published networks are compared. A small twin is another network, on which a framework's
fixed cost per step weighs far more than on the study's: its ratios say nothing about the study's, and
the section says so instead of showing them.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dlarena.frameworks.studies import STUDIES
from dlarena.report.markdown import training
from dlarena.report.tables import table
from dlarena.report.units import format_seconds
from dlarena.spec.catalogue import CATALOGUE
from dlarena.spec.published import FIGURES, NO_FIGURES, REFERENCE_FRAMEWORKS, Figure, measured_name
from dlarena.wording import counted

Row = dict[str, Any]
# Names of studies that frameworks/studies.py does not list (it lists those whose frameworks it maps).
_OTHER_STUDIES = {"chintala2015": "Chintala (convnet-benchmarks)"}
_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}

INTRO = (
    "The studies timed GPUs of their day with the framework versions of their day, so their seconds do not"
    " carry over to this run; ratios between frameworks carry over better. Each table below sets, for one"
    " published table this run covers (the same network, scenario and batch size), every framework's"
    " figure over a reference framework's: the study's ratio in each of its columns (one machine each),"
    " beside the ratio measured here (the median step time, or an accuracy cell's training time, over the"
    " reference's). Below each table: where the order of the frameworks changed since. Only the published"
    " networks are compared: a small twin is another network, on which a framework's fixed cost per step"
    " weighs far more, so its ratios say nothing about the study's."
)


def _study_name(study: str) -> str:
    return STUDIES[study].short if study in STUDIES else _OTHER_STUDIES.get(study, study)


def _measured(row: Row) -> float | None:
    """The figure set beside a published one: an ok, not mismatching cell's median step time, or an
    accuracy cell's training time (steps and data, testing excluded), the measure of a training run."""
    if row["status"] != "ok" or row.get("verification") == "mismatch":
        return None
    if row["scenario"] == "accuracy":
        train_s = training(row).get("train_s")
        return None if train_s is None else float(train_s)
    median = row.get("median_s")
    return None if median is None else float(median)


def _label(framework: str) -> str:
    """dlarena's framework measured for a published one: `torch (for torch7)` where it stands in."""
    measured = measured_name(framework)
    return measured if measured == framework else f"{measured} (for {framework})"


def _ratio(value: float | None, reference: float | None) -> str:
    return "" if value is None or reference is None or reference <= 0 else f"{value / reference:.2f}x"


def _ranks(values: dict[str, float]) -> dict[str, int]:
    """Competition ranks, fastest first: equal figures share a rank (1, 2, 2, 4)."""
    return {name: 1 + sum(other < value for other in values.values()) for name, value in values.items()}


def _order(values: dict[str, float]) -> str:
    """`mxnet < torch = cntk < tensorflow`: fastest first, equal figures joined by `=`."""
    names = sorted(values, key=lambda name: values[name])
    text = _label(names[0])
    for previous, name in itertools.pairwise(names):
        text += (" = " if values[name] == values[previous] else " < ") + _label(name)
    return text


def _ordinal(rank: int) -> str:
    return _ORDINALS.get(rank, f"{rank}th")


def ranking_change(series: str, published: dict[str, float], measured: dict[str, float]) -> str:
    """One sentence: whether the frameworks of one published column (both dicts keyed by the study's
    framework, holding only those with both figures) are in the published order here; only a pair the
    study ordered strictly and this run ordered the other way counts as a change."""
    published_ranks, measured_ranks = _ranks(published), _ranks(measured)
    swapped = [(a, b) for a in published for b in published
               if published[a] < published[b] and measured[a] > measured[b]]
    if not swapped:
        return f"{series}: same order as published ({_order(measured)})."
    moved = [f"{_label(name)} {_ordinal(published_ranks[name])} -> {_ordinal(measured_ranks[name])}"
             for name in sorted(published, key=lambda item: measured[item])
             if published_ranks[name] != measured_ranks[name]]
    return (f"{series}: **the ranking changed** since the study: published {_order(published)}; measured"
            f" {_order(measured)} ({', '.join(moved)}).")


def _reference(study: str, candidates: Sequence[str], measured: dict[str, float]) -> str:
    """The study's reference framework where it has both figures, else the fastest one that has."""
    preferred = REFERENCE_FRAMEWORKS.get(study)
    if preferred is not None:
        for name in candidates:  # the published name whose measured framework is the preferred one
            if name == preferred or measured_name(name) == preferred:
                return name
    return min(candidates, key=lambda name: measured[name])


def _heading(figure: Figure, row: Row) -> str:
    what = "training time" if row["scenario"] == "accuracy" else row["scenario"]
    return (f"### {_study_name(figure.study)}: {figure.table} / measured: {row['workload']}, {what}, {row['device']},"
            f" {row['precision']}, batch {row['batch_size']}, {counted(row['threads'], 'thread')}")


def _columns(figures: Sequence[Figure]) -> list[Figure]:
    """One figure per published column, in the table's order, for its heading and its machine."""
    return list({figure.series: figure for figure in reversed(figures)}.values())[::-1]


def _shared_versions(figures: Sequence[Figure], series: str) -> str:
    """The versions every figure of a column names (its heading's: `CUDA 8, cuDNN 6`), else nothing."""
    versions = {figure.versions for figure in figures if figure.series == series}
    return versions.pop() if len(versions) == 1 else ""


def _named(figures: Sequence[Figure], framework: str) -> str:
    """The framework as the study wrote it, with the versions it names where its column has none in common."""
    own = [figure for figure in figures if figure.framework == framework]
    versions = [figure.versions for figure in own if figure.versions and not _shared_versions(figures, figure.series)]
    return own[0].named + (f" ({versions[0]})" if versions and versions[0] not in own[0].named else "")


def comparison(figures: Sequence[Figure], rows: Sequence[Row]) -> list[str]:
    """One published table (``figures``) beside one measured configuration (``rows``, its cells); nothing
    where no framework has both a measured figure and a published one to take ratios against."""
    by_framework = {row["framework"]: row for row in rows}
    columns = _columns(figures)
    published = {(figure.series, figure.framework): figure for figure in figures}
    names = list(dict.fromkeys(figure.framework for figure in figures))
    run_here = [name for name in names if measured_name(name) in by_framework]
    measured = {name: value for name in run_here if (value := _measured(by_framework[measured_name(name)])) is not None}
    candidates = [name for name in measured
                  if any(published[(column.series, name)].value is not None for column in columns
                         if (column.series, name) in published)]
    if not candidates:
        return []
    study = figures[0].study
    reference = _reference(study, candidates, measured)
    first = figures[0]
    machines = []
    for column in columns:
        versions = _shared_versions(figures, column.series)
        machines.append(f"{column.series}: {column.hardware}" + (f" ({versions})" if versions else ""))
    lines = ["", _heading(first, rows[0]), "",
             f"Published: {first.source}, in {first.unit}; {'; '.join(machines)}. {first.notes} Ratios are each"
             f" framework's figure over **{_label(reference)}**'s.", ""]
    header = ["framework", f"as {_study_name(study)} wrote it"]
    for column in columns:
        header += [f"{column.series} published", f"{column.series} ratio"]
    measure = "training time" if rows[0]["scenario"] == "accuracy" else "median step"
    header += [f"measured {measure}", "measured ratio"]
    body = []
    for name in run_here:
        row = by_framework[measured_name(name)]
        cells = [_label(name), _named(figures, name)]
        for column in columns:
            figure = published.get((column.series, name))
            reference_figure = published.get((column.series, reference))
            cells += ["" if figure is None else figure.printed,
                      _ratio(None if figure is None else figure.value,
                             None if reference_figure is None else reference_figure.value)]
        value = measured.get(name)
        if value is not None:
            cells += [format_seconds(value), _ratio(value, measured[reference])]
        elif row["status"] == "ok" and row.get("verification") == "mismatch":
            cells += ["*invalid: mismatch*", ""]
        else:
            cells += [f"*{row['status']}*", ""]
        body.append(cells)
    lines += table(header, body)
    lines.append("")
    for column in columns:
        values = {name: figure.value for name in measured
                  if (figure := published.get((column.series, name))) is not None and figure.value is not None}
        if len(values) >= 2:
            lines.append(f"- {ranking_change(column.series, values, {name: measured[name] for name in values})}")
        else:
            lines.append(f"- {column.series}: fewer than two frameworks have both a published and a measured figure.")
    absent = list(dict.fromkeys(figure.named for figure in figures if figure.framework not in run_here))
    if absent:
        lines += ["", f"Published but not in this run: {', '.join(absent)}."]
    return lines


def _matches(figure: Figure, row: Row) -> bool:
    """Whether a measured cell times what ``figure`` timed: the same network and batch, in the scenario
    set beside it, or trained for a whole run in an accuracy cell where the study timed a whole run."""
    if row["workload"] != figure.workload or row["batch_size"] != figure.batch_size:
        return False
    return row["scenario"] == figure.scenario or (figure.epochs is not None and row["scenario"] == "accuracy")


def section(rows: Sequence[Row]) -> list[str]:
    """The report's section for a run (its annotated cell rows); nothing for a run the studies did not time."""
    tables: dict[tuple[str, str], list[Figure]] = defaultdict(list)
    for figure in FIGURES:
        if figure.scenario is not None:
            tables[(figure.study, figure.table)].append(figure)
    lines: list[str] = []
    for figures in tables.values():
        configurations: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
        for row in rows:
            if _matches(figures[0], row):
                configurations[(row["scenario"], row["device"], row["precision"], row["threads"])].append(row)
        for group in configurations.values():
            lines += comparison(figures, group)
    notes = _notes(rows)
    if not lines and not notes:
        return []
    shown = ["", "## Against the published figures"]
    if lines:  # the explanation goes with tables; a run without any gets the notes alone
        shown += ["", INTRO, *lines]
    if notes:
        shown += ["", *notes]
    return shown


def _notes(rows: Sequence[Row]) -> list[str]:
    """Why a network of the run has no published figures beside it: a small twin, or a study without any."""
    workloads = list(dict.fromkeys(row["workload"] for row in rows if row["workload"] in CATALOGUE))
    published = {figure.workload for figure in FIGURES}
    twins = [name for name in workloads if CATALOGUE[name].variant_of in published]
    notes = []
    if twins:
        networks = ", ".join(dict.fromkeys(str(CATALOGUE[name].variant_of) for name in twins))
        notes.append(f"- Small twins measured ({', '.join(twins)}): the studies published figures for {networks},"
                     " not for these; they are not set beside them.")
    for study, reason in NO_FIGURES.items():
        measured = [name for name in workloads if CATALOGUE[name].study == study]
        if measured:
            notes.append(f"- {_study_name(study)} ({', '.join(measured)}): no published timings to compare with:"
                         f" {reason}.")
    return notes

