"""What subnormal numbers cost: each framework's step time keeping them (its default) and flushing them.

    .venv/bin/python benchmarks/denormals.py [--frameworks torch,tensorflow] [--workload fcn5]
        [--batch-size 64] [--threads 1] [--repetitions 2] [--db FILE]

DLBench's FCN-5 recipe (weights uniform in +-0.5 on 26,752 inputs) saturates the sigmoids and its
gradients go subnormal. TensorFlow and JAX flush subnormals to zero; PyTorch keeps them unless told,
and arithmetic on them is many times slower on most CPUs. This runs the training cells through
dlarena itself (``api.select`` and ``api.run``, worker processes, into a database, temporary unless
``--db``), once with ``--denormals default`` and once with ``--denormals flush``, and prints each
framework's median step time in both modes beside the mode its workers measured, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dlarena import api
from dlarena.plan.cell import DENORMAL_MODES
from dlarena.report.markdown import summary_figures
from dlarena.report.units import format_seconds
from dlarena.store.database import Store


def _measure(mode: str, args: argparse.Namespace, db: Path) -> dict[str, dict[str, Any]]:
    """One run in ``mode``; each framework's cell row."""
    suite = api.select("quick", frameworks=args.frameworks.split(","), workloads=[args.workload],
                       scenarios=["train"], batch_sizes=[args.batch_size], threads=[args.threads],
                       repetitions=args.repetitions, denormals=mode)
    summary = api.run(suite, db=db, argv=[sys.argv[0], "--denormals", mode], progress=False)
    store = Store.open(db)
    try:
        return {row["framework"]: row for row in store.cell_rows(summary.run_id)}
    finally:
        store.close()


def _time(row: dict[str, Any] | None) -> tuple[str, str]:
    """A cell's median with its 95% interval, and the mode its workers measured; else its status and why."""
    if row is None:
        return "", ""
    if row["status"] != "ok" or row["median_s"] is None:
        return f"*{row['status']}*", row["message"][:80]
    interval = f" ({format_seconds(row['ci_low_s'])} - {format_seconds(row['ci_high_s'])})" if row["ci_low_s"] else ""
    return format_seconds(row["median_s"]) + interval, str(summary_figures(row).get("denormals", "?"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="torch,tensorflow")
    parser.add_argument("--workload", default="fcn5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=2, help="worker processes per cell and mode")
    parser.add_argument("--db", type=Path, help="keep the runs in this database (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() if args.db is None else nullcontext(None) as folder:
        db = args.db if args.db is not None else Path(str(folder)) / "denormals.db"
        rows = {mode: _measure(mode, args, db) for mode in DENORMAL_MODES}
    print(f"{args.workload}, train, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.repetitions} process(es) per cell and mode; median step time (95% interval), measured mode")
    print()
    print("| framework | default | measured | flush | measured | default / flush |")
    print("|---|---|---|---|---|---|")
    for framework in args.frameworks.split(","):
        default, flush = rows["default"].get(framework), rows["flush"].get(framework)
        ratio = ""
        if default and flush and default["median_s"] and flush["median_s"] and flush["status"] == "ok":
            ratio = f"{default['median_s'] / flush['median_s']:.2f}"
        print("| " + " | ".join([framework, *_time(default), *_time(flush), ratio]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
