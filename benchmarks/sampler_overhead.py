"""Does sampling resources beside the timed loop slow the steps? (issue 4; run on demand, on an idle machine)

    .venv/bin/python benchmarks/sampler_overhead.py [--frameworks torch,jax] [--rounds 3]

For each framework and workload, the same cell runs in worker processes with sampling off
(``sample_interval_s = 0``), at the default interval, and at ten times the default rate, interleaved
round by round. Each sampled variant is compared with the unsampled one by dlarena's own verdict
(measure/compare.py): ``same`` means the difference is within noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace

from dlarena.measure.compare import compare
from dlarena.plan.cell import DEFAULT_SAMPLE_INTERVAL_S, Cell, Measurement

INTERVALS_S = (0.0, DEFAULT_SAMPLE_INTERVAL_S, DEFAULT_SAMPLE_INTERVAL_S / 10)


def steps(cell: Cell) -> list[float]:
    finished = subprocess.run([sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json()],
                              capture_output=True, text=True, check=False)
    result = json.loads(finished.stdout)
    if result["status"] != "ok":
        raise SystemExit(f"{cell.label()}: {result['status']}: {result.get('message')}")
    return list(result["samples_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="torch,jax,tensorflow")
    parser.add_argument("--workloads", default="fcn5-small,karmanov-cnn-small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=2.0)
    args = parser.parse_args()
    print("| framework | workload | interval | median | ratio to unsampled | 95% CI | p-value | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for framework in args.frameworks.split(","):
        for workload in args.workloads.split(","):
            base = Cell(framework, workload, "train", batch_size=32, threads=1,
                        measurement=Measurement(min_time_s=args.min_time))
            samples: dict[float, list[list[float]]] = {interval: [] for interval in INTERVALS_S}
            for _ in range(args.rounds):
                for interval in INTERVALS_S:
                    cell = replace(base, measurement=replace(base.measurement, sample_interval_s=interval))
                    samples[interval].append(steps(cell))
            unsampled = samples[0.0]
            for interval in INTERVALS_S:
                pooled = sorted(value for group in samples[interval] for value in group)
                median = pooled[len(pooled) // 2]
                label = "off" if interval == 0 else f"{interval:g} s"
                if interval == 0:
                    print(f"| {framework} | {workload} | {label} | {median * 1e3:.3f} ms | | | | |")
                    continue
                result = compare(unsampled, samples[interval])
                print(f"| {framework} | {workload} | {label} | {median * 1e3:.3f} ms | {result.ratio:.3f} |"
                      f" {result.ci_low:.3f} - {result.ci_high:.3f} | {result.p_value:.2g} | {result.verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
