"""Every injected fault recorded with the right status, no result lost across a kill -9 (issue 5).

    .venv/bin/python benchmarks/faults.py [--per-kind N]

Runs one sweep with N cells of every kind of fault among N healthy cells (the test-only fault
frameworks: raise, segfault, exit, hang, runaway memory, a framework's out-of-memory error,
unsupported, unavailable), kills the orchestrator with SIGKILL a third of the way through, resumes
it, and prints per kind: faults injected, recorded with the right status, and for the whole sweep
the ok cells measured and the results lost (stored before the kill, missing or changed after).
Target: every fault recorded, none lost.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["DLARENA_FAULT_FRAMEWORKS"] = "1"  # before dlarena's registry is read, here and in children

EXPECTED = {
    "fault-none": "ok", "fault-raise": "failed", "fault-segfault": "failed", "fault-exit": "failed",
    "fault-hang": "timeout", "fault-grow": "oom", "fault-oom-error": "oom", "fault-unsupported": "unsupported",
    "fault-unavailable": "unavailable",
}
# Short limits keep the sweep to minutes: a hang costs its timeout, a runaway allocation its limit.
TIMEOUT_S = 3
MEMORY_LIMIT_GIB = 0.5


def suite_text(per_kind: int) -> str:
    frameworks = ", ".join(f'"{name}"' for name in EXPECTED)
    batches = ", ".join(str(batch) for batch in range(1, per_kind + 1))
    return (f'name = "faults"\nrepetitions = 1\nmemory_limit_gib = {MEMORY_LIMIT_GIB}\ntimeout_s = {TIMEOUT_S}\n'
            f'frameworks = [{frameworks}]\nworkloads = ["fcn5-small"]\nscenarios = ["infer"]\nthreads = [1]\n'
            f"batch_sizes = [{batches}]\n[measurement]\nwarmup_steps = 1\nmin_steps = 5\nmin_time_s = 0.05\n")


def results(db: Path) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT * FROM results ORDER BY id").fetchall()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=3, help="cells of each kind (default 3)")
    args = parser.parse_args()
    total = args.per_kind * len(EXPECTED)
    with tempfile.TemporaryDirectory() as folder:
        db, suite = Path(folder) / "faults.db", Path(folder) / "faults.toml"
        suite.write_text(suite_text(args.per_kind))
        env = {**os.environ, "DLARENA_LOCK": str(Path(folder) / "lock")}
        command = [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite), "--db", str(db), "--quiet"]
        sweep = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(results(db)) < total // 3 and sweep.poll() is None:
            time.sleep(0.2)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        before = results(db)
        resumed = subprocess.run([*command[:3], "run", "--resume", "--db", str(db), "--quiet"], env=env,
                                 capture_output=True, text=True, check=False)
        if resumed.returncode != 0:
            print(resumed.stderr, file=sys.stderr)
        after = {row[0]: row for row in results(db)}
        lost = sum(1 for row in before if after.get(row[0]) != row)
        with sqlite3.connect(db) as connection:
            rows = connection.execute(
                "SELECT c.framework, r.status FROM cells c LEFT JOIN results r ON r.cell_id = c.id"
            ).fetchall()
            integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    print(f"killed with SIGKILL after {len(before)} of {total} cells, then resumed; integrity_check: {integrity}\n")
    print("| kind | injected | recorded with the right status | statuses seen |")
    print("|---|---|---|---|")
    right_total = 0
    for framework, expected in EXPECTED.items():
        statuses = [status for name, status in rows if name == framework]
        right = sum(1 for status in statuses if status == expected)
        right_total += right
        seen = ", ".join(f"{status} x{statuses.count(status)}" for status in sorted(set(map(str, statuses))))
        print(f"| {framework.removeprefix('fault-')} (expect {expected}) | {args.per_kind} | {right} | {seen} |")
    duplicated = len(rows) - total
    print(f"\n{right_total} of {total} cells recorded with the right status; ok cells measured:"
          f" {sum(1 for name, status in rows if name == 'fault-none' and status == 'ok')} of {args.per_kind};"
          f" results lost: {lost}; duplicated: {duplicated}.")
    return 0 if right_total == total and lost == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
