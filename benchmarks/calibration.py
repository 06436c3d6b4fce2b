"""How often are dlarena's verdicts wrong on this machine, and does it find a real 10% difference?
(issue 17's four measurements; run on demand, not in `make test`)

    .venv/bin/python benchmarks/calibration.py [--repetitions 3] [--only aa-ab,between] [--db FILE [--analyse]]

- **A/A and A/B** (``aa-ab``), ``--repetitions`` times: one run of the quick suite's timing cells (its
  small MLP, CNN and LSTM, train and infer, one thread, the suite's defaults: processes by need) on
  three frameworks, interleaved: ``torch``; ``fault-torch-twin``, torch under a second name; and
  ``fault-torch-slower``, torch with every step followed by a busy wait of 10% of that step
  (frameworks/slowed.py). Every verdict of the twin against torch that is not ``same`` is a false one
  (target: at most 5% of cells, over all repetitions); the slower one against torch must be ``slower``
  in at least 90% of cells, its ratio's 95% interval holding 1.10.
- **Between runs** (``between``): the whole quick suite twice (every default framework, its digits
  training too); per timing cell, each framework's ratio to torch in run 1 against run 2 must agree
  within 5% in at least 90% of cells. Its wall times are the quick suite's cost with the new defaults
  (target: 10 minutes).

Every verdict is the one the reports give (measure/compare.compare on report-ready samples,
measure/aggregate.cell_groups). Each run's canary readings say how noisy the machine was meanwhile.
Prints one table per measurement and a summary against the targets; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The test-only frameworks are registered when the registry is first imported.
os.environ["DLARENA_FAULT_FRAMEWORKS"] = "1"

from dlarena import api
from dlarena.frameworks.registry import CALIBRATION_SLOWDOWN, default_frameworks
from dlarena.measure.aggregate import cell_groups
from dlarena.measure.compare import MIN_EFFECT, Comparison, compare
from dlarena.store.database import Store
from repeatability import AGREEMENT, TARGET_FRACTION  # issue 4's criterion, which issue 17 applies to ratios

BASELINE = "torch"
TWIN = "fault-torch-twin"
SLOWER = "fault-torch-slower"
# Issue 17's targets.
FALSE_VERDICTS_AT_MOST = 0.05  # A/A: share of cells with a faster/slower verdict
POWER_AT_LEAST = 0.90  # A/B: share of cells found slower
QUICK_BUDGET_S = 600.0  # the quick suite, issue 4
TIMING_SCENARIOS = "train,infer"
ANALYSE_ONLY = False  # --analyse: read the runs of an earlier --db instead of measuring
# One-sided normal quantiles: a verdict's interval is two-sided 95% (1.96 each side), and power 90%
# asks the interval's low end to clear the minimum effect nine times in ten (1.28).
Z_INTERVAL = 1.96
Z_POWER = 1.28


@dataclass(frozen=True)
class Verdict:
    cell: str  # workload and scenario
    comparison: Comparison


@contextmanager
def _store(db: Path) -> Iterator[Store]:
    store = Store.open(db, create=False)
    try:
        yield store
    finally:
        store.close()


def _cells(store: Store, run_id: str) -> dict[tuple[str, str], dict[str, dict[str, object]]]:
    """The run's ok timing cells: (workload, scenario) -> framework -> row."""
    cells: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
    for row in store.cell_rows(run_id):
        if row["status"] == "ok" and row["scenario"] != "accuracy":
            cells.setdefault((row["workload"], row["scenario"]), {})[row["framework"]] = row
    return cells


def verdicts(db: Path, run_id: str, a: str, b: str) -> list[Verdict]:
    """B against A on every timing cell both measured, as the reports would judge it."""
    with _store(db) as store:
        found = []
        for (workload, scenario), rows in sorted(_cells(store, run_id).items()):
            if a in rows and b in rows:
                groups_a = cell_groups(store.ok_processes(int(str(rows[a]["cell_id"]))))
                groups_b = cell_groups(store.ok_processes(int(str(rows[b]["cell_id"]))))
                found.append(Verdict(f"{workload} {scenario}", compare(groups_a, groups_b)))
        return found


def machine(db: Path, run_id: str) -> str:
    """The canary over the run: its spread and the processes it found in a slow spell."""
    with _store(db) as store:
        readings = store.canary_readings(run_id)
    if not readings:
        return "no canary readings"
    after = [reading["after_s"] for reading in readings]
    typical = statistics.median(after)
    spells = sum(bool(reading["slow_spell"]) for reading in readings)
    return (f"canary {typical * 1e6:.0f} us typical, slowest {max(after) / typical - 1:+.0%},"
            f" {spells} of {len(readings)} processes in a slow spell")


def process_spread(db: Path, run_id: str) -> tuple[float, float] | None:
    """The pooled standard deviation of log process medians within the run's timing cells (how far
    one process of a cell lands from another), and the median number of processes a cell used."""
    deviations, degrees, counts = 0.0, 0, []
    with _store(db) as store:
        for rows in _cells(store, run_id).values():
            for row in rows.values():
                groups = cell_groups(store.ok_processes(int(str(row["cell_id"]))))
                logs = [math.log(statistics.median(group)) for group in groups if group]
                counts.append(len(logs))
                if len(logs) > 1:
                    deviations += statistics.variance(logs) * (len(logs) - 1)
                    degrees += len(logs) - 1
    return (math.sqrt(deviations / degrees), statistics.median(counts)) if degrees else None


def detectable(spread: float, processes: float) -> float:
    """The smallest slowdown a verdict finds nine times in ten with ``processes`` a side, when process
    medians spread by ``spread`` (log scale): the ratio's interval must clear MIN_EFFECT."""
    half = (Z_INTERVAL + Z_POWER) * spread * math.sqrt(2 / processes)
    return (1 + MIN_EFFECT) * math.exp(half) - 1


def predicted_agreement(spread: float, processes: float) -> float:
    """The share of ratios to torch that two runs bring within AGREEMENT of each other when each of the
    four cell medians involved (two frameworks, two runs) is off by process noise alone: the log of
    the ratio of ratios has variance 4 spread^2 / processes."""
    deviation = spread * math.sqrt(4 / processes)
    return math.erf(math.log1p(AGREEMENT) / (deviation * math.sqrt(2))) if deviation > 0 else 1.0


def _stored(db: Path, label: str) -> tuple[str, float, int] | None:
    """A finished run of this script labelled ``label`` in ``db``, as ``_run`` returns it (--analyse)."""
    if not db.exists():
        return None
    with _store(db) as store:
        for run in reversed(store.runs()):
            if run["command"][1:] == [label] and run["status"] == "finished":
                started, finished = (datetime.fromisoformat(run[key]) for key in ("started_at", "finished_at"))
                return run["id"], (finished - started).total_seconds(), int(run["processes_finished"])
    return None


def _run(frameworks: Sequence[str] | None, scenarios: str | None, db: Path, label: str) -> tuple[str, float, int]:
    if ANALYSE_ONLY:
        found = _stored(db, label)
        if found is None:
            raise SystemExit(f"calibration.py: {db} holds no finished run {label!r} to analyse")
        return found
    suite = api.select("quick", frameworks=list(frameworks) if frameworks else None, scenarios=scenarios)
    start = time.perf_counter()
    summary = api.run(suite, db=db, argv=["benchmarks/calibration.py", label])
    elapsed = time.perf_counter() - start
    return summary.run_id, elapsed, sum(summary.processes.values())


def aa_ab(db: Path, repetitions: int) -> bool:
    print(f"## A/A and A/B: {BASELINE} against {TWIN} (the same) and {SLOWER} ({CALIBRATION_SLOWDOWN:.0%} slower)\n")
    print(f"| repetition | cell | {TWIN} vs {BASELINE} | {SLOWER} vs {BASELINE} | interval holds"
          f" {1 + CALIBRATION_SLOWDOWN:.2f} | processes (torch, twin, slower) |")
    print("|---|---|---|---|---|---|")
    false = found = holds = cells = 0
    costs = []
    for repetition in range(1, repetitions + 1):
        run_id, elapsed, processes = _run([BASELINE, TWIN, SLOWER], TIMING_SCENARIOS, db, f"aa-ab {repetition}")
        costs.append((elapsed, processes, machine(db, run_id), process_spread(db, run_id)))
        same = {verdict.cell: verdict.comparison for verdict in verdicts(db, run_id, BASELINE, TWIN)}
        slower = {verdict.cell: verdict.comparison for verdict in verdicts(db, run_id, BASELINE, SLOWER)}
        with _store(db) as store:
            counts = {key: [int(str(rows[name]["processes_run"])) if name in rows else 0
                            for name in (BASELINE, TWIN, SLOWER)] for key, rows in _cells(store, run_id).items()}
        for cell in sorted(set(same) & set(slower)):
            twin, slow = same[cell], slower[cell]
            contains = slow.ci_low <= 1 + CALIBRATION_SLOWDOWN <= slow.ci_high
            cells += 1
            false += twin.real
            found += slow.verdict == "slower"
            holds += contains
            workload, scenario = cell.rsplit(" ", 1)
            print(f"| {repetition} | {cell} | {twin.describe()} | {slow.describe()} | {'yes' if contains else 'no'} |"
                  f" {', '.join(map(str, counts[(workload, scenario)]))} |")
    print()
    for repetition, (elapsed, processes, noise, spread) in enumerate(costs, start=1):
        print(f"Repetition {repetition}: {elapsed:.0f} s, {processes} processes; {noise}; " + (
            f"process medians of a cell spread by {spread[0]:.1%} (log sd), {spread[1]:g} processes a cell:"
            f" the smallest slowdown found nine times in ten is {detectable(*spread):.0%}" if spread else "no spread"
        ) + ".")
    false_share = false / cells if cells else 1.0
    power = found / cells if cells else 0.0
    print(f"\nA/A: {false} false verdicts in {cells} cells ({false_share:.1%}); target at most"
          f" {FALSE_VERDICTS_AT_MOST:.0%}: {'met' if false_share <= FALSE_VERDICTS_AT_MOST else 'NOT met'}.")
    print(f"A/B: {found} of {cells} cells found slower ({power:.0%}); target at least {POWER_AT_LEAST:.0%}:"
          f" {'met' if power >= POWER_AT_LEAST else 'NOT met'}. The interval held {1 + CALIBRATION_SLOWDOWN:.2f}"
          f" in {holds} of {cells}.\n")
    return false_share <= FALSE_VERDICTS_AT_MOST and power >= POWER_AT_LEAST


def _ratios(db: Path, run_id: str) -> dict[tuple[str, str, str], float]:
    """Each framework's median over torch's, per timing cell."""
    with _store(db) as store:
        ratios = {}
        for (workload, scenario), rows in _cells(store, run_id).items():
            if BASELINE not in rows:
                continue
            base = float(str(rows[BASELINE]["median_s"]))
            for framework, row in rows.items():
                if framework != BASELINE:
                    ratios[(framework, workload, scenario)] = float(str(row["median_s"])) / base
        return ratios


def between(db: Path) -> bool:
    print("## Between runs: the quick suite twice, each framework's ratio to torch\n")
    # the suite's own frameworks, not the test-only ones this script registers beside them
    frameworks = [name for name in default_frameworks() if not name.startswith("fault-")]
    runs = [_run(frameworks, None, db, f"between {number}") for number in (1, 2)]
    first, second = (_ratios(db, run_id) for run_id, _, _ in runs)
    print(f"| framework | cell | ratio to {BASELINE}, run 1 | run 2 | difference | within {AGREEMENT:.0%} |")
    print("|---|---|---|---|---|---|")
    agreeing = compared = 0
    for key in sorted(set(first) & set(second)):
        difference = second[key] / first[key] - 1
        compared += 1
        agreeing += abs(difference) <= AGREEMENT
        framework, workload, scenario = key
        print(f"| {framework} | {workload} {scenario} | {first[key]:.3f} | {second[key]:.3f} | {difference:+.1%} |"
              f" {'yes' if abs(difference) <= AGREEMENT else 'NO'} |")
    share = agreeing / compared if compared else 0.0
    print()
    spreads = []
    for number, (run_id, elapsed, processes) in enumerate(runs, start=1):
        spread = process_spread(db, run_id)
        spreads += [spread] if spread else []
        print(f"Run {number} ({run_id}): {elapsed:.0f} s ({elapsed / 60:.1f} min), {processes} processes;"
              f" {machine(db, run_id)}; budget {QUICK_BUDGET_S / 60:.0f} min:"
              f" {'met' if elapsed <= QUICK_BUDGET_S else 'NOT met'}"
              + (f"; process medians of a cell spread by {spread[0]:.1%} (log sd)" if spread else "") + ".")
    print(f"\nBetween runs: {agreeing} of {compared} ratios ({share:.0%}) agree within {AGREEMENT:.0%}; target at"
          f" least {TARGET_FRACTION:.0%}: {'met' if share >= TARGET_FRACTION else 'NOT met'}.")
    if spreads:
        spread = math.sqrt(statistics.fmean(value[0] ** 2 for value in spreads))
        processes = statistics.fmean(value[1] for value in spreads)
        print(f"The process spread alone ({spread:.1%}, {processes:g} processes a cell) predicts"
              f" {predicted_agreement(spread, processes):.0%} of ratios within {AGREEMENT:.0%}.\n")
    return share >= TARGET_FRACTION and all(elapsed <= QUICK_BUDGET_S for _, elapsed, _ in runs)


MEASUREMENTS = {"aa-ab": aa_ab, "between": between}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3, help="A/A and A/B runs (default: 3)")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"comma-separated measurements: {', '.join(MEASUREMENTS)} (default: all)")
    parser.add_argument("--db", type=Path, help="keep every run in this database (default: a temporary one)")
    parser.add_argument("--analyse", action="store_true",
                        help="measure nothing: analyse the runs an earlier call kept in --db")
    args = parser.parse_args()
    if args.analyse and args.db is None:
        parser.error("--analyse reads the runs of an earlier --db: name it")
    global ANALYSE_ONLY
    ANALYSE_ONLY = args.analyse
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in MEASUREMENTS]
    if unknown or not chosen:
        parser.error(f"unknown measurement {unknown[0] if unknown else '(none)'!r}; valid: {', '.join(MEASUREMENTS)}")
    if args.repetitions < 1:
        parser.error(f"--repetitions must be at least 1, got {args.repetitions}")
    met = True
    with tempfile.TemporaryDirectory() if args.db is None else nullcontext(None) as folder:
        db = args.db if args.db is not None else Path(str(folder)) / "calibration.db"
        start = time.perf_counter()
        if "aa-ab" in chosen:
            met &= aa_ab(db, args.repetitions)
        if "between" in chosen:
            met &= between(db)
        print(f"All measurements: {time.perf_counter() - start:.0f} s.")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
