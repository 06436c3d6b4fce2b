"""Issue 2's speed targets, measured on demand (not in `make test`: this machine is shared and noisy).

    .venv/bin/python benchmarks/targets.py [--repeats N]

Prints a table: the wall time of `dlarena --help` (target under 0.5 s) and of the quick suite with
torch alone (target at most 3 minutes on a 2-core machine), each against its target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Targets named in issue 2.
HELP_TARGET_S = 0.5
QUICK_TORCH_TARGET_S = 180.0


def wall(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of `dlarena --help` (default 5)")
    args = parser.parse_args()
    dlarena = [sys.executable, "-m", "dlarena.cli"]
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        help_times = [wall([*dlarena, "--help"], cwd) for _ in range(args.repeats)]
        quick = wall([*dlarena, "run", "--suite", "quick", "--frameworks", "torch", "--db", "q.db", "--quiet"], cwd)
    rows = [
        (f"dlarena --help (median of {args.repeats})", statistics.median(help_times), HELP_TARGET_S),
        ("quick suite, torch alone", quick, QUICK_TORCH_TARGET_S),
    ]
    print(f"| {'measurement':<32} | {'seconds':>8} | {'target':>7} | met |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|-----|")
    for name, seconds, target in rows:
        print(f"| {name:<32} | {seconds:>8.3f} | {target:>7.1f} | {'yes' if seconds <= target else 'NO '} |")
    return 0 if all(seconds <= target for _, seconds, target in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
