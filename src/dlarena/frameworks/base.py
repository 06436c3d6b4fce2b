"""The contract between the worker and a framework module.

A framework module is imported only inside a worker process, after the worker has set the thread
count and CPU affinity. It exposes one ``Backend`` class; the worker calls ``prepare`` once and then
``Runner.step`` many times, reading the clock only after ``Runner.sync``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from dlarena.spec import Workload


class Unsupported(Exception):
    """The framework cannot express this cell (a layer, a scenario, a device); the cell is ``unsupported``."""


class Unavailable(Exception):
    """The framework or the device is not there; the cell is ``unavailable``."""


@dataclass(frozen=True)
class StepRequest:
    """What the worker asks a backend to prepare, all decided by the cell."""

    workload: Workload
    scenario: str
    batch_size: int
    device: str
    threads: int
    precision: str
    seed: int


@dataclass
class Parity:
    """What a framework really ran with, read back from the framework wherever it can tell."""

    threads: int | None = None
    dtype: str | None = None
    layout: str | None = None
    execution: str | None = None  # eager, graph, jit, compiled ...
    tf32: bool | None = None
    cudnn_benchmark: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    """A prepared network with its synthetic batch, ready to step."""

    def step(self) -> None:
        """One train step (forward, backward, update) or one inference step (forward only)."""

    def sync(self) -> None:
        """Wait until the device has finished the work queued so far."""

    def trainable_params(self) -> int:
        """The parameter count as the framework itself reports it."""

    def parity(self) -> Parity: ...


class Backend(Protocol):
    name: str

    def version(self) -> str: ...

    def prepare(self, request: StepRequest) -> Runner:
        """Build the network, its optimizer and a synthetic batch; raise Unsupported or Unavailable."""
