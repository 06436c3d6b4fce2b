"""Why Keras on PyTorch is slow at batch 1: its per-layer Python, not torch's kernels.

    .venv/bin/python benchmarks/keras_torch_overhead.py [--calls 300] [--core 1]

For each small transformer it times a batch-1 forward of dlarena's torch module and of its keras-torch
module (Keras 3's own forward, as the `infer` cell runs it) in one process on one core, then profiles
the Keras forward with cProfile: how many Keras ``Layer.__call__`` one forward makes, and what share of
the profiled time torch's own operations take (everything else is Keras' Python around them:
argument binding through ``inspect``, pytree flattening, dtype standardisation, torch ``Module``
attribute tracking). Keras' ``jit_compile="auto"`` compiles nothing on the torch backend, so that
cost is paid on every call; under JAX and TensorFlow it is paid once, when the forward is traced.
cProfile slows Python more than the kernels, so the torch share it shows is a lower bound.

Not part of ``make test``; always exits 0. Needs torch and keras (`make demo`'s .venv).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from typing import Any

os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported

from dlarena.frameworks.base import StepRequest
from dlarena.spec.catalogue import get_workload

WORKLOADS = ("bert-base-small", "gpt2-124m-small")
# Calls before timing: Keras builds and caches on its first calls, torch allocates its buffers.
WARMUP_CALLS = 50


def _median_ms(runner: Any, calls: int) -> float:
    for _ in range(WARMUP_CALLS):
        runner.step()
        runner.sync()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner.step()
        runner.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _profile(runner: Any, calls: int) -> tuple[float, float, float]:
    """Layer.__call__ per forward, the torch operations' profiled seconds, and all profiled seconds."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        runner.step()
        runner.sync()
    profile.disable()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    torch_ops = sum(entry[2] for (path, _, name), entry in stats.items()
                    if path == "~" and ("torch" in name or "TensorBase" in name))
    layer_calls = sum(entry[1] for (path, _, name), entry in stats.items()
                      if name == "__call__" and path.endswith(os.path.join("keras", "src", "layers", "layer.py")))
    return layer_calls / calls, torch_ops, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed and profiled forwards per framework")
    parser.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)), help="the core to run on")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    import torch

    from dlarena.frameworks import keras3, pytorch

    torch.set_num_threads(1)
    print(f"batch-1 forward, 1 thread on core {args.core}, median of {args.calls} calls (torch {torch.__version__})")
    print(f"{'workload':<18} {'torch ms':>9} {'keras-torch ms':>15} {'ratio':>6} {'Layer calls':>12} {'torch ops':>10}")
    for name in WORKLOADS:
        request = StepRequest(workload=get_workload(name), scenario="infer", batch_size=1, device="cpu", threads=1,
                              precision="float32", seed=0)
        torch_ms = _median_ms(pytorch.Backend(threads=1).prepare(request), args.calls)
        keras_runner = keras3.Backend(threads=1, backend="torch").prepare(request)
        keras_ms = _median_ms(keras_runner, args.calls)
        layers, torch_s, total_s = _profile(keras_runner, args.calls)
        print(f"{name:<18} {torch_ms:>9.2f} {keras_ms:>15.2f} {keras_ms / torch_ms:>5.0f}x {layers:>12.0f}"
              f" {torch_s / total_s:>9.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
