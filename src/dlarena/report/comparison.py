"""`dlarena compare`: two runs cell by cell, or two frameworks within one run, with verdicts; more
frameworks (or a named baseline) are ranked per configuration by report/ranking.

Cells are matched by their configuration. Whatever else differs between the two sides (dlarena's
code, framework versions, the machine, measurement settings) is listed above the table: results
are never compared silently across a change the reader did not ask about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dlarena.errors import DlarenaError, did_you_mean
from dlarena.measure.aggregate import cell_groups
from dlarena.measure.compare import VERDICTS, Comparison, compare, verdict_rule
from dlarena.report.annotate import annotate
from dlarena.report.ranking import Ranking, comparison_table, rank_rows, withheld_note
from dlarena.report.units import format_seconds
from dlarena.store import verdicts
from dlarena.store.database import Store
from dlarena.wording import counted

Row = dict[str, Any]
_CONFIGURATION = ("workload", "scenario", "device", "precision", "batch_size", "threads", "replicas", "node")


@dataclass(frozen=True)
class CellComparison:
    a: Row
    b: Row
    result: Comparison | None  # None when one side has no time
    reason: str = ""


def _measurement(row: Row) -> dict[str, Any]:
    measurement: dict[str, Any] = json.loads(row["config"]).get("measurement", {})
    return measurement


def _differences(label_a: str, label_b: str, pairs: Sequence[tuple[Row, Row]], env_a: Row, env_b: Row,
                 run_a: Row, run_b: Row) -> list[str]:
    notes = []
    if run_a["code_version"] != run_b["code_version"]:
        notes.append(f"dlarena code: {run_a['code_version']} ({label_a}) vs {run_b['code_version']} ({label_b})")
    for key in sorted(set(env_a) | set(env_b)):
        if key in ("dlarena", "frameworks", "hostname"):
            continue
        if env_a.get(key) != env_b.get(key):
            notes.append(f"machine {key}: {env_a.get(key)} ({label_a}) vs {env_b.get(key)} ({label_b})")
    if env_a.get("hostname") != env_b.get("hostname"):
        notes.append(f"host: {env_a.get('hostname')} ({label_a}) vs {env_b.get('hostname')} ({label_b})")
    versions = {(a["framework_version"], b["framework_version"], a["framework"], b["framework"]) for a, b in pairs
                if a["framework_version"] != b["framework_version"] and a["framework"] == b["framework"]}
    notes += [f"{framework} version: {version_a} vs {version_b}" for version_a, version_b, framework, _ in sorted(
        versions, key=str)]
    settings = {(json.dumps(_measurement(a), sort_keys=True), json.dumps(_measurement(b), sort_keys=True))
                for a, b in pairs}
    notes += [f"measurement settings: {x} ({label_a}) vs {y} ({label_b})" for x, y in sorted(settings) if x != y]
    if run_a.get("repetitions") != run_b.get("repetitions"):
        notes.append(f"processes per cell: {run_a.get('repetitions')} ({label_a}) vs {run_b.get('repetitions')}"
                     f" ({label_b})")
    return notes


def _compare_pairs(store: Store, pairs: Sequence[tuple[Row, Row]]) -> list[CellComparison]:
    compared = []
    for a, b in pairs:
        if a["status"] != "ok" or b["status"] != "ok":
            reason = "; ".join(f"{side} is {row['status']}" for side, row in (("A", a), ("B", b))
                               if row["status"] != "ok")
            compared.append(CellComparison(a, b, None, reason))
            continue
        compared.append(CellComparison(a, b, compare(cell_groups(store.ok_processes(a["cell_id"])),
                                                     cell_groups(store.ok_processes(b["cell_id"])))))
    return compared


def _check_frameworks(frameworks: Sequence[str] | None, baseline: str | None) -> None:
    if baseline is not None and not frameworks:
        raise DlarenaError(f"--baseline {baseline} goes with --frameworks A,B,C: the frameworks to set against it")
    if not frameworks:
        return
    if len(frameworks) < 2:
        raise DlarenaError(f"--frameworks takes at least two frameworks to compare, got {len(frameworks)}")
    repeated = sorted({name for name in frameworks if frameworks.count(name) > 1})
    if repeated:
        raise DlarenaError(f"--frameworks names {repeated[0]!r} more than once")
    if baseline is not None and baseline not in frameworks:
        raise DlarenaError(f"--baseline {baseline!r} is not one of --frameworks: {', '.join(frameworks)}")


def _check_present(name: str, rows: Sequence[Row], present: Sequence[str], run: Row) -> None:
    if name not in {row["framework"] for row in rows}:
        raise DlarenaError(f"run {run['id']} has no cell of {name!r}{did_you_mean(name, present)};"
                           f" its frameworks: {', '.join(present)}")


@dataclass(frozen=True)
class PairComparison:
    """Run B against run A, or framework B against framework A: matched cells with their verdicts."""

    label_a: str
    label_b: str
    comparisons: tuple[CellComparison, ...]
    differences: tuple[str, ...]  # what differs besides what was asked (code, machine, versions, settings)
    unmatched: int  # cells without a counterpart


@dataclass(frozen=True)
class FrameworkRanking:
    """Several frameworks of one run, each configuration's ranked against its fastest or a baseline."""

    rankings: tuple[Ranking, ...]
    frameworks: tuple[str, ...]
    run_id: str
    baseline: str | None


def compare_runs(store: Store, run_a: str, run_b: str | None, frameworks: Sequence[str] | None,
                 baseline: str | None = None, nodes: Sequence[str] | None = None) -> str:
    """The comparison as Markdown: run B against run A, framework B against A, N frameworks ranked, or
    cluster node B against node A."""
    found = compare_nodes(store, run_a, nodes, run_b, frameworks) if nodes else comparison(
        store, run_a, run_b, frameworks, baseline)
    if isinstance(found, FrameworkRanking):
        return comparison_table(found.rankings, found.frameworks, found.run_id, found.baseline)
    return render(found.label_a, found.label_b, found.comparisons, found.differences, found.unmatched)


def comparison(store: Store, run_a: str, run_b: str | None, frameworks: Sequence[str] | None,
               baseline: str | None = None) -> PairComparison | FrameworkRanking:
    """Run B against run A, framework B against A, or N frameworks ranked, for any rendering.

    Two frameworks without ``baseline`` compare B against A; more, or a named ``baseline``, rank the
    frameworks of each configuration of one run against the fastest or the baseline (report/ranking).
    """
    _check_frameworks(frameworks, baseline)
    first = dict(store.run(run_a))
    if run_b is None and not frameworks:
        raise DlarenaError("compare needs a second run, or --frameworks A,B to compare two frameworks of one run")
    if frameworks and (len(frameworks) > 2 or baseline is not None):
        if run_b is not None:
            raise DlarenaError("ranking frameworks (more than two, or against --baseline) reads one run; drop"
                               f" {run_b}, or compare two frameworks across the runs with --frameworks A,B")
        return _rank(store, first, frameworks, baseline)
    second = dict(store.run(run_b)) if run_b else first
    rows_a, rows_b = store.cell_rows(first["id"]), store.cell_rows(second["id"])
    if frameworks:
        name_a, name_b = frameworks
        present = sorted({row["framework"] for row in rows_a} | {row["framework"] for row in rows_b})
        for name, rows, run in ((name_a, rows_a, first), (name_b, rows_b, second)):
            _check_present(name, rows, present, run)
        rows_a = [row for row in rows_a if row["framework"] == name_a]
        rows_b = [row for row in rows_b if row["framework"] == name_b]
        label_a, label_b = name_a, name_b
        def key(row: Row) -> tuple[Any, ...]:
            return tuple(row.get(column) for column in _CONFIGURATION)
    else:
        label_a, label_b = first["id"], second["id"]
        def key(row: Row) -> tuple[Any, ...]:
            return (row["framework"], *(row.get(column) for column in _CONFIGURATION))
    by_key = {key(row): row for row in rows_b}
    pairs = [(row, by_key[key(row)]) for row in rows_a if key(row) in by_key]
    unmatched = len(rows_a) - len(pairs) + len(rows_b) - len(pairs)
    if not pairs:
        raise DlarenaError(f"{label_a} and {label_b} have no cell with the same configuration to compare")
    differences = _differences(label_a, label_b, pairs, store.environment(first["environment_id"]),
                               store.environment(second["environment_id"]), first, second)
    return PairComparison(label_a, label_b, tuple(_compare_pairs(store, pairs)), tuple(differences), unmatched)


def compare_nodes(store: Store, run_id: str, nodes: Sequence[str], run_b: str | None = None,
                  frameworks: Sequence[str] | None = None) -> PairComparison:
    """Node B against node A within one run that measured every cell on both (`--spread`): the same
    framework and configuration on two machines, with what differs between the machines above."""
    if run_b is not None or frameworks:
        raise DlarenaError("--nodes compares two nodes of one run: it takes no second run and no --frameworks")
    run = dict(store.run(run_id))
    machines = {str(node["node"]): node["machine"] for node in store.run_nodes(run["id"])}
    present = sorted(machines)
    if len(nodes) != 2 or nodes[0] == nodes[1]:
        raise DlarenaError(f"--nodes takes two different nodes of the run, A,B; its nodes:"
                           f" {', '.join(present) or 'none'}")
    for name in nodes:
        if name not in present:
            raise DlarenaError(f"run {run['id']} measured nothing on a node {name!r}{did_you_mean(name, present)};"
                               f" its nodes: {', '.join(present) or 'none (a run on this machine)'}")
    rows = store.cell_rows(run["id"])
    pairs = node_pairs(rows, nodes[0], nodes[1])
    if not pairs:
        raise DlarenaError(f"run {run['id']} has no cell measured on both {nodes[0]} and {nodes[1]} (run it with"
                           " --spread to measure every cell on every node)")
    label_a, label_b = f"node {nodes[0]}", f"node {nodes[1]}"
    differences = _differences(label_a, label_b, pairs, machines[nodes[0]], machines[nodes[1]], run, run)
    unmatched = sum(1 for row in rows if row.get("node") in nodes) - 2 * len(pairs)
    return PairComparison(label_a, label_b, tuple(_compare_pairs(store, pairs)), tuple(differences), unmatched)


def node_pairs(rows: Sequence[Row], node_a: str, node_b: str) -> list[tuple[Row, Row]]:
    """The cells pinned to ``node_a`` with their twins on ``node_b`` (the same framework and configuration)."""
    def key(row: Row) -> tuple[Any, ...]:
        return (row["framework"], *(row.get(column) for column in _CONFIGURATION if column != "node"))
    by_key = {key(row): row for row in rows if row.get("node") == node_b}
    return [(row, by_key[key(row)]) for row in rows if row.get("node") == node_a and key(row) in by_key]


def _rank(store: Store, run: Row, frameworks: Sequence[str], baseline: str | None) -> FrameworkRanking:
    """The frameworks of each configuration that at least two of them ran, ranked (report/ranking)."""
    rows = store.cell_rows(run["id"])
    present = sorted({row["framework"] for row in rows})
    for name in frameworks:
        _check_present(name, rows, present, run)
    chosen = [row for row in rows if row["framework"] in frameworks]
    # As the report does: a mismatch is never the fastest.
    annotate(chosen, verdicts.statuses(store, str(run["code_version"])))
    rankings = [ranking for ranking in rank_rows(store, chosen, baseline, accuracy_by_target=False)
                if len(ranking.entries) > 1]
    if not rankings:
        raise DlarenaError(f"run {run['id']} has no configuration that two of {', '.join(frameworks)} both ran")
    return FrameworkRanking(tuple(rankings), tuple(frameworks), str(run["id"]), baseline)


def render(label_a: str, label_b: str, comparisons: Sequence[CellComparison], differences: Sequence[str],
           unmatched: int) -> str:
    lines = [f"# {label_b} (B) against {label_a} (A)", ""]
    if differences:
        lines += ["Besides what you asked to compare, these differ:", ""]
        lines += [f"- {note}" for note in differences] + [""]
    lines += [
        "Ratio: B's median step time over A's (below 1: B is faster), with its 95% bootstrap interval. "
        + verdict_rule(),
        "",
        *([withheld_note(), ""] if any(item.result and item.result.withheld for item in comparisons) else []),
        "| framework | workload | scenario | batch | threads | A median | B median | B/A | 95% CI | p-value"
        " | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in comparisons:
        a, b, result = item.a, item.b, item.result
        framework = a["framework"] if a["framework"] == b["framework"] else f"{a['framework']} / {b['framework']}"
        head = f"| {framework} | {a['workload']} | {a['scenario']} | {a['batch_size']} | {a['threads']} |"
        if result is None:
            lines.append(f"{head} | | | | | not compared: {item.reason} |")
            continue
        lines.append(
            f"{head} {format_seconds(a['median_s'])} | {format_seconds(b['median_s'])} | {result.ratio:.3f} |"
            f" {result.ci_low:.3f} - {result.ci_high:.3f} | {result.p_value:.2g} | {result.describe()} |"
        )
    if unmatched:
        lines += ["", unmatched_note(unmatched)]
    lines += ["", tally(comparisons)]
    return "\n".join(lines) + "\n"


def unmatched_note(unmatched: int) -> str:
    return (f"{counted(unmatched, 'cell')} had no counterpart with the same configuration and"
            f" {'is' if unmatched == 1 else 'are'} not shown.")


def tally(comparisons: Sequence[CellComparison]) -> str:
    """The closing sentence: how many compared cells B is faster, slower or the same in."""
    counts = {verdict: sum(1 for item in comparisons if item.result and item.result.verdict == verdict)
              for verdict in VERDICTS}
    withheld = f", withheld in {counts['withheld']}" if counts["withheld"] else ""
    return (f"B is faster in {counts['faster']}, slower in {counts['slower']}, the same in {counts['same']}"
            f"{withheld} of the compared cells.")
