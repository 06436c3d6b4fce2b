"""A cell: one point of a sweep, measured by one fresh worker process."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Defaults of the measurement loop. pyperf takes values of at least 100 ms and asv samples for at
# least 10 ms per repeat; a step-level loop needs more steps than either to estimate quantiles, so
# the floor is 10 steps and 1 s of measured time, after 3 warm-up steps past the first (timed apart).
DEFAULT_WARMUP_STEPS = 3
DEFAULT_MIN_STEPS = 10
DEFAULT_MIN_TIME_S = 1.0
# A cap, so that a slow network at a large batch still ends: no more than this many measured steps
# and no longer than this many seconds once the minimum number of steps is reached.
DEFAULT_MAX_STEPS = 10_000
DEFAULT_MAX_TIME_S = 30.0
# Past this wall time the orchestrator kills the worker's process group and stores `timeout`.
# Torch Inductor compiles a small network in about 20 s on 2 cores; published networks at full size
# can take minutes per step on a CPU, so the limit is generous and overridable per suite and per run.
DEFAULT_TIMEOUT_S = 600.0
# Resources (memory; on a GPU its use and power) are sampled beside the steady state this often;
# 0 turns sampling off. 10 Hz: NVML averages GPU utilisation over 1/6 s to 1 s depending on the
# product (nvmlDeviceGetUtilizationRates), so sampling faster adds cost without adding information.
DEFAULT_SAMPLE_INTERVAL_S = 0.1
# Persistent compilation caches (torch.compile's Inductor cache, and JAX's or TensorFlow's where a
# user turned them on) survive between processes, so without control a compiled framework's first
# step depends on what ran on the machine before: torch-compile fcn5-small's first training step took
# 29.7 s with an empty Inductor cache and 2.8 s with a warm one, here. "cold" gives every worker
# process an empty private cache (the cost a user pays the first time, and the same for every
# framework: JAX and TensorFlow-XLA keep no cache by default); "shared" leaves the framework's own
# cache as the machine has it (what a user re-running a script sees), and each result says so.
COMPILE_CACHES = ("cold", "shared")
DEFAULT_COMPILE_CACHE = "cold"
# Subnormal (denormal) numbers: TensorFlow and JAX flush them to zero in their own threads, PyTorch,
# ONNX Runtime and NumPy keep them, and arithmetic on them can be many times slower on a CPU. On
# DLBench's FCN-5 (saturated sigmoids, subnormal gradients) a hand-written torch training loop at batch
# 64 on one thread took 769 ms a step keeping them and 611 ms flushing them, here. "default" leaves every framework as
# it is (what its users get); "flush" turns flush-to-zero on where the framework has a switch, and a
# cell whose framework still keeps them is `unsupported`. Every result records the mode it measured
# (dlarena_runner/denormals.py).
DENORMAL_MODES = ("default", "flush")
DEFAULT_DENORMALS = "default"


@dataclass(frozen=True)
class Measurement:
    """How long and how often a worker steps; part of a cell's identity."""

    warmup_steps: int = DEFAULT_WARMUP_STEPS
    min_steps: int = DEFAULT_MIN_STEPS
    min_time_s: float = DEFAULT_MIN_TIME_S
    max_steps: int = DEFAULT_MAX_STEPS
    max_time_s: float = DEFAULT_MAX_TIME_S
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    compile_cache: str = DEFAULT_COMPILE_CACHE  # one of COMPILE_CACHES
    denormals: str = DEFAULT_DENORMALS  # one of DENORMAL_MODES


@dataclass(frozen=True)
class Cell:
    framework: str
    workload: str
    scenario: str
    batch_size: int
    threads: int
    device: str = "cpu"
    precision: str = "float32"
    seed: int = 0
    measurement: Measurement = field(default_factory=Measurement)
    # The accuracy scenario only: the most epochs, and the test accuracy that ends training early.
    epochs: int | None = None
    target_accuracy: float | None = None
    # The cluster node it runs on, by name (orchestrate/ray_executor.py), when a run measures the same
    # cells on every node; None: wherever a measurement slot is free (always, locally). Part of its
    # identity: two machines' figures are two cells.
    node: str | None = None
    # The train-dp scenario only: how many replicas (processes, each with ``threads`` cores of its own)
    # share the step, ``batch_size`` being the global batch, split evenly among them.
    replicas: int = 1

    def for_process(self, repetition: int) -> Cell:
        """What the cell's ``repetition``-th worker process runs.

        Timing processes repeat the same cell; accuracy processes each train from another seed
        (starting weights, batch order, dropout), since the spread over seeds is what they measure.
        """
        return replace(self, seed=self.seed + repetition) if self.scenario == "accuracy" else self

    def to_dict(self) -> dict[str, Any]:
        """Its fields; ``node`` and ``replicas`` only when not their defaults, so that a cell keeps the key
        it had before they existed."""
        data = asdict(self)
        if data["node"] is None:
            del data["node"]
        if data["replicas"] == 1:
            del data["replicas"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        values = dict(data)
        values["measurement"] = Measurement(**values.get("measurement", {}))
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        data: dict[str, Any] = json.loads(text)
        return cls.from_dict(data)

    def key(self, code_version: str, framework_versions: dict[str, str]) -> str:
        """A hash of everything that makes results comparable: configuration, code and versions."""
        material = json.dumps(
            {"cell": self.to_dict(), "code": code_version, "versions": framework_versions}, sort_keys=True
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def label(self) -> str:
        seed = f" seed {self.seed}" if self.scenario == "accuracy" else ""
        node = f" on {self.node}" if self.node is not None else ""
        if self.replicas != 1:
            node = f" x{self.replicas} replicas" + node
        return (
            f"{self.framework} {self.workload} {self.scenario} {self.device} "
            f"batch {self.batch_size} threads {self.threads}{seed}{node}"
        )
