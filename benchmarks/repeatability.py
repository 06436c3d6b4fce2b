"""Do two runs of the same suite agree? (issue 4's target; run on demand, on an idle machine)

    .venv/bin/python benchmarks/repeatability.py [--suite quick] [--frameworks torch,jax] [--db FILE]

Runs the suite twice into a database (temporary unless ``--db``) and prints, per cell, both medians,
their difference and the medians of each run's processes; then what fraction of the cells agree
within 5% (target: at least 90%), beside what the spread between processes *within* each run
predicts for that fraction. If the observed share is near the prediction, the runs differ by no
more than processes of one run differ from each other (the machine's and the processes' noise, see
``benchmarks/machine_noise.py``); far below it, something changed between the runs. A line per run
shows how much slower each round of processes ran than its cells' medians: a round slow across all
cells and frameworks is a slow spell of the machine, not of a framework.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from dlarena import api
from dlarena.store.database import Store

# Issue 4: medians of two runs within 5% of each other for at least 90% of the cells.
AGREEMENT = 0.05
TARGET_FRACTION = 0.90


def predicted_agreement(process_medians: list[tuple[list[float], list[float]]]) -> tuple[float, float] | None:
    """The pooled spread of log process medians within runs, and the share of cells it predicts to agree.

    Each item is one cell's process medians in run 1 and in run 2. If the two runs' cell medians
    differed only by process-to-process noise, log(B / A) would be normal with variance
    s^2 (1/k1 + 1/k2), s^2 being the variance of a log process median within a run.
    """
    deviations, degrees = 0.0, 0
    for runs in process_medians:
        for medians in runs:
            if len(medians) > 1:
                logs = [math.log(value) for value in medians]
                deviations += statistics.variance(logs) * (len(logs) - 1)
                degrees += len(logs) - 1
    if not degrees:
        return None
    spread = math.sqrt(deviations / degrees)
    shares = []
    for first, second in process_medians:
        sd = spread * math.sqrt(1 / len(first) + 1 / len(second))
        shares.append(math.erf(math.log1p(AGREEMENT) / (sd * math.sqrt(2))) if sd > 0 else 1.0)
    return spread, statistics.fmean(shares)


def round_slowdowns(cells: list[list[float]]) -> list[float]:
    """Per round of processes (the first of every cell, then the second, ...), the median over cells of
    that process's median against its cell's median, minus one. A whole round well above 0 was a slow
    spell of the machine: every framework measured in it was slowed alike."""
    rounds = max((len(medians) for medians in cells), default=0)
    return [statistics.median(medians[index] / statistics.median(medians) - 1
                              for medians in cells if len(medians) > index) for index in range(rounds)]


def _milliseconds(values: list[float]) -> str:
    return ", ".join(f"{value * 1e3:.3f}" for value in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--frameworks", help="comma-separated (default: the suite's)")
    parser.add_argument("--repetitions", type=int, help="processes per cell (default: the suite's)")
    parser.add_argument("--db", type=Path, help="keep both runs in this database (default: a temporary one)")
    args = parser.parse_args()
    frameworks = args.frameworks.split(",") if args.frameworks else None
    suite = api.select(args.suite, frameworks=frameworks, repetitions=args.repetitions)
    with tempfile.TemporaryDirectory() if args.db is None else nullcontext(None) as folder:
        db = args.db if args.db is not None else Path(str(folder)) / "repeat.db"
        runs = [api.run(suite, db=db, argv=["benchmarks/repeatability.py"], progress=True).run_id for _ in range(2)]
        store = Store.open(db)
        first, second = (store.cell_rows(run) for run in runs)
        processes = {row["cell_id"]: [statistics.median(steps) for steps in store.samples_by_process(row["cell_id"])]
                     for row in [*first, *second] if row["status"] == "ok"}
        store.close()
    print(f"Runs {runs[0]} and {runs[1]}" + (f" in {args.db}" if args.db else "") + ".\n")
    print(f"| cell | median, run 1 | median, run 2 | difference | within {AGREEMENT:.0%} |"
          " process medians, run 1 (ms) | process medians, run 2 (ms) |")
    print("|---|---|---|---|---|---|---|")
    agreeing = compared = 0
    pairs = []
    for a, b in zip(first, second, strict=True):
        label = f"{a['framework']} {a['workload']} {a['scenario']} batch {a['batch_size']} threads {a['threads']}"
        if a["status"] != "ok" or b["status"] != "ok":
            print(f"| {label} | {a['status']} | {b['status']} | | | | |")
            continue
        difference = b["median_s"] / a["median_s"] - 1
        compared += 1
        agreeing += abs(difference) <= AGREEMENT
        pairs.append((processes[a["cell_id"]], processes[b["cell_id"]]))
        print(f"| {label} | {a['median_s'] * 1e3:.3f} ms | {b['median_s'] * 1e3:.3f} ms | {difference:+.1%} |"
              f" {'yes' if abs(difference) <= AGREEMENT else 'NO'} | {_milliseconds(pairs[-1][0])} |"
              f" {_milliseconds(pairs[-1][1])} |")
    fraction = agreeing / compared if compared else 0.0
    met = fraction >= TARGET_FRACTION
    print(f"\n{agreeing} of {compared} ok cells ({fraction:.0%}) agree within {AGREEMENT:.0%};"
          f" target {TARGET_FRACTION:.0%}: {'met' if met else 'NOT met'}.")
    for number, run_cells in enumerate(zip(*pairs, strict=True), start=1) if pairs else ():
        slowdowns = ", ".join(f"{value:+.0%}" for value in round_slowdowns(list(run_cells)))
        print(f"Run {number}, each round of processes against its cells' medians (median over cells): {slowdowns}.")
    prediction = predicted_agreement(pairs)
    if prediction is not None:
        spread, share = prediction
        print(f"Within each run, a cell's process medians spread by {spread:.1%} (pooled standard deviation of their"
              f" logarithms); if only that noise separated the two runs, {share:.0%} of the cells would agree"
              f" within {AGREEMENT:.0%}.")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
