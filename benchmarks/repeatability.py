"""Do two runs of the same suite agree? (issue 4's target; run on demand, on an idle machine)

    .venv/bin/python benchmarks/repeatability.py [--suite quick] [--frameworks torch,jax]

Runs the suite twice into a temporary database and prints, per cell, both medians and their
difference; the last line says what fraction of the cells agree within 5% (target: at least 90%).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dlarena import api
from dlarena.store.database import Store

# Issue 4: medians of two runs within 5% of each other for at least 90% of the cells.
AGREEMENT = 0.05
TARGET_FRACTION = 0.90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--frameworks", help="comma-separated (default: the suite's)")
    parser.add_argument("--repetitions", type=int, help="processes per cell (default: the suite's)")
    args = parser.parse_args()
    frameworks = args.frameworks.split(",") if args.frameworks else None
    suite = api.select(args.suite, frameworks=frameworks, repetitions=args.repetitions)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "repeat.db"
        runs = [api.run(suite, db=db, argv=["benchmarks/repeatability.py"], progress=True).run_id for _ in range(2)]
        store = Store.open(db)
        first, second = (store.cell_rows(run) for run in runs)
        store.close()
    print(f"| cell | median, run 1 | median, run 2 | difference | within {AGREEMENT:.0%} |")
    print("|---|---|---|---|---|")
    agreeing = compared = 0
    for a, b in zip(first, second, strict=True):
        label = f"{a['framework']} {a['workload']} {a['scenario']} batch {a['batch_size']} threads {a['threads']}"
        if a["status"] != "ok" or b["status"] != "ok":
            print(f"| {label} | {a['status']} | {b['status']} | | |")
            continue
        difference = b["median_s"] / a["median_s"] - 1
        compared += 1
        agreeing += abs(difference) <= AGREEMENT
        print(f"| {label} | {a['median_s'] * 1e3:.3f} ms | {b['median_s'] * 1e3:.3f} ms | {difference:+.1%} |"
              f" {'yes' if abs(difference) <= AGREEMENT else 'NO'} |")
    fraction = agreeing / compared if compared else 0.0
    met = fraction >= TARGET_FRACTION
    print(f"\n{agreeing} of {compared} ok cells ({fraction:.0%}) agree within {AGREEMENT:.0%};"
          f" target {TARGET_FRACTION:.0%}: {'met' if met else 'NOT met'}.")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
