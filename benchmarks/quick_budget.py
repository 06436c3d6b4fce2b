"""The quick suite's budgets, measured on demand on an idle machine (not in `make test`).

    .venv/bin/python benchmarks/quick_budget.py [--frameworks torch,jax]

Runs the quick suite (every default framework unless told otherwise) into a temporary database,
then prints one row per digits training cell (test accuracy, epochs and time to the target, the
worker's wall time) and the budgets against their targets:

- issue 4: the whole quick suite in at most 10 minutes on a 2-core machine;
- issue 6: the digits workloads reach 97% test accuracy on every framework that trains, all of
  their processes together (import, build, training, testing) in at most 3 minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dlarena import api
from dlarena.report.markdown import training
from dlarena.spec.catalogue import DIGITS_TARGET_ACCURACY
from dlarena.store.database import Store

QUICK_TARGET_S = 600.0  # issue 4
DIGITS_TARGET_S = 180.0  # issue 6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", help="comma-separated (default: the suite's)")
    args = parser.parse_args()
    suite = api.select("quick", frameworks=args.frameworks.split(",") if args.frameworks else None)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "quick.db"
        start = time.perf_counter()
        run_id = api.run(suite, db=db, argv=["benchmarks/quick_budget.py"], progress=True).run_id
        total_s = time.perf_counter() - start
        store = Store.open(db)
        rows = store.cell_rows(run_id)
        walls = store.connection.execute(
            "SELECT c.scenario, r.wall_s FROM results r JOIN cells c ON c.id = r.cell_id WHERE c.run_id = ?",
            (run_id,)).fetchall()
        store.close()
    digits_s = sum(row["wall_s"] for row in walls if row["scenario"] == "accuracy")
    print("\n| framework | workload | status | test accuracy | epochs to target | time to target | process wall |")
    print("|---|---|---|---|---|---|---|")
    trained = [row for row in rows if row["scenario"] == "accuracy"]
    reached = 0
    for row in trained:
        figures = training(row)
        if row["status"] != "ok" or not figures:
            print(f"| {row['framework']} | {row['workload']} | {row['status']} | | | | |")
            continue
        reached += figures["accuracy"] >= DIGITS_TARGET_ACCURACY
        seconds = figures["time_to_target_s"]
        print(f"| {row['framework']} | {row['workload']} | ok | {figures['accuracy']:.2%} |"
              f" {figures['epochs_to_target'] or 'not reached'} | {'' if seconds is None else f'{seconds:.2f} s'} |"
              f" {row['wall_s']:.1f} s |")
    trainable = [row for row in trained if row["status"] != "unsupported"]
    checks = [
        (f"digits: {DIGITS_TARGET_ACCURACY:.0%} on every framework that trains",
         f"{reached} of {len(trainable)}", reached == len(trainable) > 0),
        ("digits: all processes together", f"{digits_s:.0f} s (target {DIGITS_TARGET_S:.0f} s)",
         digits_s <= DIGITS_TARGET_S),
        ("quick suite, start to end", f"{total_s:.0f} s (target {QUICK_TARGET_S:.0f} s)", total_s <= QUICK_TARGET_S),
    ]
    print("\n| budget | measured | met |\n|---|---|---|")
    for name, measured, met in checks:
        print(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    return 0 if all(met for _, _, met in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
