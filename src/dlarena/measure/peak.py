"""The machine's practical peak: a large float32 matrix product through NumPy's BLAS.

``python -m dlarena.measure.peak --threads N`` prints one JSON object. It runs in its own process,
limited to N cores and N BLAS threads before NumPy is imported, exactly as a worker is; a cell's
achieved GFLOP/s over the peak at its thread count tells whether a framework is slow or the network
is simply bound by memory rather than arithmetic. A tuned SGEMM reaches 80-95% of a CPU's
theoretical peak, which no framework's convolution beats by much, so it is the honest ceiling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

# float32 matrices of 2048 x 2048 (16 MiB each) outrun every cache of this class of machine and give
# the BLAS enough work to feed every core: 17 GFLOP per product.
PEAK_MATRIX_SIZE = 2048
# The best of several products, as peak is what the machine can do, not what it did on average.
PEAK_REPEATS = 5
# Generous: a slow core at 5 GFLOP/s takes 3.4 s per product.
PEAK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Peak:
    threads: int
    gflops: float
    matrix_size: int
    library: str


def measure_peak(size: int = PEAK_MATRIX_SIZE, repeats: int = PEAK_REPEATS) -> tuple[float, str]:
    """GFLOP/s of the best of ``repeats`` float32 products of ``size`` x ``size`` matrices, and the BLAS."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = a @ b  # the first product starts the BLAS's thread pool and pages its buffers in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9, _blas_name(np)


def _blas_name(np: Any) -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):  # NumPy < 1.26 has no dict mode
        return "unknown BLAS"


def probe(threads: int, size: int = PEAK_MATRIX_SIZE) -> Peak | None:
    """Run the probe in a fresh process limited to ``threads`` cores; None if it failed."""
    command = [sys.executable, "-m", "dlarena.measure.peak", "--threads", str(threads), "--size", str(size)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=PEAK_TIMEOUT_S, check=False)
        data = json.loads(finished.stdout)
        return Peak(threads=int(data["threads"]), gflops=float(data["gflops"]), matrix_size=int(data["matrix_size"]),
                    library=str(data["library"]))
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlarena.measure.peak", description=__doc__)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=PEAK_MATRIX_SIZE)
    args = parser.parse_args(argv)
    from dlarena_runner.process import limit_threads

    limit_threads(args.threads)  # before NumPy starts its BLAS
    gflops, library = measure_peak(args.size)
    print(json.dumps({"threads": args.threads, "gflops": gflops, "matrix_size": args.size, "library": library}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
