"""Which framework is fastest: the frameworks of each configuration of a run, ranked.

Per configuration (workload, scenario, device, precision, batch size, threads) every framework's
median is set against the fastest's, or a named baseline's, by measure/compare.rank: the ratio with
its bootstrap interval and the verdict of `dlarena compare`. Timing cells rank by step time; in the
report's headline, accuracy cells rank by time to the target accuracy (one figure per seed, and each
seed is its own process). The report's headline and `dlarena compare --frameworks A,B,C` both render
these rankings.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dlarena.measure.aggregate import cell_groups
from dlarena.measure.compare import MIN_PROCESSES, VERDICTS, Comparison, rank, verdict_rule
from dlarena.report.annotate import unstable
from dlarena.report.tables import table
from dlarena.report.units import format_seconds
from dlarena.store.database import Store
from dlarena.wording import counted

Row = dict[str, Any]
# node: the cluster node a cell was pinned to (`dlarena run --executor ray --spread`), None elsewhere: the
# frameworks are ranked per machine, never across two.
CONFIGURATION = ("workload", "scenario", "device", "precision", "batch_size", "threads", "replicas", "node")
# The axes beside workload and scenario that a headline names only where a run varies them.
VARYING_AXES = ("device", "precision", "batch_size", "threads", "replicas", "node")
# Values of those axes that go without saying when every cell has them: one process, this machine.
UNSHOWN: dict[str, Any] = {"replicas": 1, "node": None}
# A headline names the frameworks a fastest one really beats up to this many, then counts them: a
# sentence of nine names is a table in disguise.
NAMED_IN_HEADLINE = 3
STEP_TIME = "step time"
TIME_TO_TARGET = "time to target"


@dataclass(frozen=True)
class Entry:
    row: Row
    median: float | None  # seconds: the median step, or the median time to target over the seeds that reached it
    comparison: Comparison | None  # against the baseline; None for the baseline and where there is no figure
    note: str = ""  # why there is no figure, or what qualifies the one there is

    @property
    def framework(self) -> str:
        return str(self.row["framework"])


@dataclass(frozen=True)
class Ranking:
    row: Row  # a row of the configuration (any: they share it)
    measure: str  # STEP_TIME or TIME_TO_TARGET
    baseline: str | None  # the framework the others are set against; None when none has a valid figure
    named: bool  # the baseline was asked for; otherwise it is the fastest
    entries: tuple[Entry, ...]  # fastest first, then the cells without a figure
    missing_baseline: bool = False  # a named baseline that has no figure in this configuration

    @property
    def configuration(self) -> tuple[Any, ...]:
        return tuple(self.row.get(axis) for axis in CONFIGURATION)

    @property
    def compared(self) -> list[tuple[Entry, Comparison]]:
        """The entries set against the baseline, with their comparison."""
        return [(entry, entry.comparison) for entry in self.entries if entry.comparison is not None]


def _time_to_target_samples(store: Store, row: Row) -> tuple[list[list[float]], str]:
    """One figure per seed that reached the target (each seed is one process), and a note on the rest."""
    runs = [process["accuracy"] for process in store.ok_processes(row["cell_id"]) if process.get("accuracy")]
    if not runs or runs[0].get("target_accuracy") is None:
        return [], "no target accuracy"
    reached = [[float(run["time_to_target_s"])] for run in runs if run.get("time_to_target_s") is not None]
    if not reached:
        return [], "target not reached"
    note = f"{len(reached)} of {counted(len(runs), 'seed')} reached the target" if len(reached) < len(runs) else ""
    return reached, note


def rank_rows(store: Store, rows: Sequence[Row], baseline: str | None = None,
              accuracy_by_target: bool = True) -> list[Ranking]:
    """The rows' configurations, in the rows' order, each with its frameworks ranked.

    ``rows`` are a run's cell rows, annotated (report/annotate) where verification should count: a
    framework whose numbers mismatch is never the fastest. With ``accuracy_by_target`` accuracy cells
    rank by time to their target accuracy, otherwise by their training steps' times.
    """
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(axis) for axis in CONFIGURATION)].append(row)
    return [_rank_group(store, group, baseline, TIME_TO_TARGET if accuracy_by_target and group[0]["scenario"]
                        == "accuracy" else STEP_TIME) for group in groups.values()]


def _figures(store: Store, row: Row, measure: str) -> tuple[list[list[float]], str]:
    """A cell's figures, one list per process, and a note: why there are none, or what qualifies them."""
    if row["status"] != "ok":
        return [], str(row["status"])
    if measure == TIME_TO_TARGET:
        return _time_to_target_samples(store, row)
    found = cell_groups(store.ok_processes(row["cell_id"]))  # the samples its summary rests on
    return found, "" if found else "no step times"


def _rank_group(store: Store, group: Sequence[Row], baseline: str | None, measure: str) -> Ranking:
    samples: dict[str, list[list[float]]] = {}
    notes: dict[str, str] = {}
    for row in group:
        found, notes[row["framework"]] = _figures(store, row, measure)
        if found:
            samples[row["framework"]] = found
    excluded = {row["framework"] for row in group if row.get("verification") == "mismatch"}
    missing = baseline is not None and baseline not in samples
    # A named baseline without a figure here leaves nothing to compare with: every side is excluded.
    ranked = rank(samples, None if missing else baseline, excluded=set(samples) if missing else excluded)
    chosen = None if missing else baseline or next((item.name for item in ranked if item.name not in excluded), None)
    # valid figures first, fastest first; then the struck-out ones; then the cells without a figure
    ranked = [item for item in ranked if item.name not in excluded] + [item for item in ranked if item.name in excluded]
    by_framework = {row["framework"]: row for row in group}
    entries = [Entry(by_framework[item.name], item.median, item.comparison, notes[item.name]) for item in ranked]
    entries += [Entry(row, None, None, notes[row["framework"]]) for row in group if row["framework"] not in samples]
    return Ranking(group[0], measure, chosen, baseline is not None, tuple(entries), missing)


# --- rendering --------------------------------------------------------------------------------------


def times(comparison: Comparison) -> str:
    """The ratio as a reader says it: `1.19x slower`, `1.25x faster`."""
    if comparison.ratio >= 1.0:
        return f"{comparison.ratio:.2f}x slower"
    return f"{1.0 / comparison.ratio:.2f}x faster"


def interval(comparison: Comparison) -> str:
    """The ratio's 95% interval in the same direction as `times` (faster: the reciprocal interval)."""
    if comparison.ratio >= 1.0:
        return f"{comparison.ci_low:.2f} - {comparison.ci_high:.2f}"
    return f"{1.0 / comparison.ci_high:.2f} - {1.0 / comparison.ci_low:.2f}"


def real(comparison: Comparison) -> str:
    """Whether the difference is real, in the words of the headline."""
    if comparison.withheld:
        return comparison.describe()
    return "yes" if comparison.real else "no"


def framework_text(row: Row, figure: bool = True, steps: bool = True) -> str:
    """The framework's name with what a reader must know before trusting its ``figure``, where it has one.

    ``steps``: the figure is a step time, which the cell's stability warnings are about.
    """
    name, verification = str(row["framework"]), row.get("verification")
    if not figure:
        return name
    if verification == "mismatch":
        return f"~~{name}~~ *invalid: mismatch*"
    marks = []
    if verification == "unverified":
        marks.append("unverified")
    elif verification not in (None, "verified"):
        marks.append(f"verify: {verification}")
    if steps and unstable(row):
        marks.append("unstable")
    return name + "".join(f" *({mark})*" for mark in marks)


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def withheld_note() -> str:
    """The sentence above a table with a withheld verdict."""
    return (f"A verdict is withheld where a side has fewer than {MIN_PROCESSES} worker processes: the steps of one"
            " process agree far more closely than separate processes of the same cell do, so one process cannot"
            " show whether another run would agree, and its tiny p-value means nothing (run with"
            f" `--repetitions {MIN_PROCESSES}` or more; the default is 3).")


def _title(ranking: Ranking, varying: Sequence[str]) -> str:
    row = ranking.row
    parts = [row["workload"], row["scenario"]]
    for axis in varying:
        if axis == "batch_size":
            parts.append(f"batch {row['batch_size']}")
        elif axis == "threads":
            parts.append(counted(row["threads"], "thread"))
        elif axis == "node":
            parts.append(f"node {row['node']}")
        elif axis == "replicas":
            parts.append(counted(row["replicas"], "replica"))
        else:
            parts.append(str(row[axis]))
    return ", ".join(str(part) for part in parts)


def _sentence(ranking: Ranking) -> str:
    """The headline of one configuration: the fastest, and which others are really slower."""
    ranked = [entry for entry in ranking.entries if entry.median is not None]
    if ranking.baseline is None:
        return "no framework produced a valid time" if not ranked else "every framework's numbers mismatch"
    fastest = next(entry for entry in ranked if entry.framework == ranking.baseline)
    per = " a step" if ranking.measure == STEP_TIME else " to the target"
    text = f"**{ranking.baseline}** is fastest ({format_seconds(fastest.median or 0.0)}{per})"
    compared = [(entry, comparison) for entry, comparison in ranking.compared
                if entry.row.get("verification") != "mismatch"]
    if not compared:
        return text + ", the only framework with a valid figure"
    same = [entry.framework for entry, comparison in compared if not comparison.real and not comparison.withheld]
    withheld = [entry.framework for entry, comparison in compared if comparison.withheld]
    really = [entry.framework for entry, comparison in compared if comparison.real]
    if len(really) == len(compared):
        return text + {1: "; the other framework is really slower", 2: "; both others are really slower"}.get(
            len(really), f"; all {len(really)} others are really slower")
    clauses = []
    if really:
        clauses.append(f"really faster than {_names(really)}" if len(really) <= NAMED_IN_HEADLINE
                       else f"really faster than {len(really)} of {len(compared)} others")
    if same:
        clauses.append(f"not really faster than {_names(same)}")
    if withheld:
        clauses.append(f"no verdict against {_names(withheld)} (fewer than {MIN_PROCESSES} processes)")
    return text + "; " + "; ".join(clauses)


def _figure(entry: Entry) -> str:
    if entry.median is None:
        return f"*{entry.note}*"
    return format_seconds(entry.median) + (f" ({entry.note})" if entry.note else "")


def headline(rankings: Sequence[Ranking]) -> list[str]:
    """The report's opening section: per configuration, the fastest framework and how the others compare."""
    if not rankings:
        return []
    varying = [axis for axis in VARYING_AXES if len({ranking.row.get(axis) for ranking in rankings}) > 1]
    first = rankings[0].row
    constant = [axis for axis in VARYING_AXES if axis not in varying and first.get(axis) != UNSHOWN.get(axis, ...)]
    shared = ", ".join(
        f"batch {first[axis]}" if axis == "batch_size"
        else counted(first[axis], "thread") if axis == "threads"
        else counted(first[axis], "replica") if axis == "replicas"
        else f"node {first[axis]}" if axis == "node" else str(first[axis])
        for axis in constant)
    lines = [
        "## Which framework is fastest", "",
        "Per network and scenario" + (f" (every cell: {shared})" if shared else "") + ": the fastest framework,"
        " and how many times slower each other one is (its median over the fastest's, with the 95% bootstrap"
        " interval of that ratio). " + verdict_rule() + " Accuracy cells rank by the time to their target"
        " accuracy (median over the seeds that reached it). *(unverified)*: `dlarena verify` has not checked the"
        " framework on this network; a struck-out framework computes different numbers and is never the fastest;"
        " *(unstable)*: see the stability warnings below.",
    ]
    if _any_withheld(rankings):
        lines += ["", withheld_note()]
    for ranking in rankings:
        steps = ranking.measure == STEP_TIME
        column = "median step" if steps else "median time to target"
        body = []
        for entry in ranking.entries:
            comparison = entry.comparison
            if comparison is None:
                versus = "fastest" if entry.framework == ranking.baseline and entry.median is not None else ""
                body.append([framework_text(entry.row, entry.median is not None, steps), _figure(entry), versus, "",
                             ""])
                continue
            body.append([framework_text(entry.row, True, steps), _figure(entry), times(comparison),
                         interval(comparison), real(comparison)])
        lines += ["", f"**{_title(ranking, varying)}**: {_sentence(ranking)}.", ""]
        lines += table(["framework", column, "vs fastest", "95% CI", "real difference?"], body)
    return lines


def _any_withheld(rankings: Sequence[Ranking]) -> bool:
    return any(comparison.withheld for ranking in rankings for _, comparison in ranking.compared)


def comparison_table(rankings: Sequence[Ranking], frameworks: Sequence[str], run_id: str,
                     baseline: str | None = None) -> str:
    """`dlarena compare RUN --frameworks A,B,C`: each configuration's frameworks against the fastest or ``baseline``."""
    reference = "baseline" if baseline else "fastest"
    lines = [f"# {', '.join(frameworks)} in run {run_id}, against {baseline or 'the fastest'}", "",
             f"Ratio: each framework's median step time over the {reference}'s, as x times slower or faster, with"
             " its 95% bootstrap interval. " + verdict_rule()]
    if _any_withheld(rankings):
        lines += ["", withheld_note()]
    body = []
    for ranking in rankings:
        row = ranking.row
        head = [row["workload"], row["scenario"], str(row["batch_size"]), str(row["threads"])]
        for entry in ranking.entries:
            comparison = entry.comparison
            if comparison is None:
                text = ""
                if entry.median is not None and entry.framework == ranking.baseline:
                    text = reference
                elif entry.median is not None and ranking.missing_baseline:
                    text = f"no {baseline} time to compare with"
                body.append([*head, framework_text(entry.row, entry.median is not None), _figure(entry), text, "",
                             "", ""])
                continue
            body.append([*head, framework_text(entry.row), _figure(entry), times(comparison),
                         interval(comparison), f"{comparison.p_value:.2g}", comparison.describe()])
    header = ["workload", "scenario", "batch", "threads", "framework", "median", f"vs {reference}", "95% CI",
              "p-value", "verdict"]
    lines += ["", *table(header, body), "", tally(rankings, frameworks, baseline)]
    return "\n".join(lines) + "\n"


def tally(rankings: Sequence[Ranking], frameworks: Sequence[str], baseline: str | None) -> str:
    """One closing sentence: how often each framework was fastest, or each one's verdicts against the baseline."""
    if baseline is None:
        fastest = [ranking.baseline for ranking in rankings if ranking.baseline]
        counts = ", ".join(f"{name} {fastest.count(name)}" for name in frameworks)
        return f"Fastest in {counted(len(fastest), 'compared configuration')}: {counts}."
    parts = []
    for name in frameworks:
        if name == baseline:
            continue
        verdicts = [comparison.verdict for ranking in rankings for entry, comparison in ranking.compared
                    if entry.framework == name]
        counts = ", ".join(f"{verdict} in {verdicts.count(verdict)}" for verdict in VERDICTS
                           if verdict != "withheld" or verdict in verdicts)
        parts.append(f"{name} {counts}")
    return f"Against {baseline}: " + "; ".join(parts) + "."
