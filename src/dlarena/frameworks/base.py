"""The contract between the worker and a framework module.

A framework module is imported only inside a worker process, after the worker has set the thread
count and CPU affinity. It exposes one ``Backend`` class; the worker calls ``prepare`` once and then
``Runner.step`` many times, reading the clock only after ``Runner.sync``. For the ``accuracy``
scenario it calls ``trainer`` once and feeds the ``Trainer`` real batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dlarena.frameworks.registry import TIMED_PRECISIONS
from dlarena.spec import Workload
from dlarena_runner.errors import Unavailable as Unavailable
from dlarena_runner.errors import Unsupported as Unsupported

if TYPE_CHECKING:
    import numpy as np




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


# What ``prepare`` runs unless a framework module says otherwise (``trainer`` runs ``accuracy``).
SCENARIOS: tuple[str, ...] = ("train", "infer")
PRECISIONS: tuple[str, ...] = TIMED_PRECISIONS  # the registry's, which planning reads (no framework imported)
# What a Checker computes in: float32, the precision timed, and float64, in which `dlarena verify`
# compares gradients (see orchestrate/verify.py for why).
CHECK_PRECISIONS: tuple[str, ...] = ("float32", "float64")


def require(
    request: StepRequest, backend: str, scenarios: tuple[str, ...] = SCENARIOS,
    precisions: tuple[str, ...] = PRECISIONS,
) -> None:
    """Raise Unsupported, with the valid choices, for a scenario or precision the backend lacks."""
    if request.scenario not in scenarios:
        raise Unsupported(f"the {backend} backend runs the scenarios {', '.join(scenarios)}, not {request.scenario!r}")
    if request.precision not in precisions:
        raise Unsupported(f"the {backend} backend runs in {', '.join(precisions)} only, not {request.precision!r}")


def require_check_precision(precision: str, backend: str, precisions: tuple[str, ...] = CHECK_PRECISIONS) -> None:
    """Raise Unsupported, with the valid choices, for a precision the backend's Checker lacks."""
    if precision not in precisions:
        raise Unsupported(f"the {backend} checker computes in {', '.join(precisions)} only, not {precision!r}")


@dataclass
class Parity:
    """What a framework really ran with, read back from the framework wherever it can tell."""

    threads: int | None = None
    dtype: str | None = None
    layout: str | None = None
    execution: str | None = None  # eager, graph, jit, compiled ...
    tf32: bool | None = None
    cudnn_benchmark: bool | None = None
    # Subnormal numbers "flush" (to zero), "keep" or "mixed": measured by the worker with the
    # framework's own product after the steps (dlarena_runner/denormals.py), never set by a module.
    denormals: str | None = None
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

    # Optional, read with getattr by the worker: ``device_memory_peak_bytes() -> int | None``, the
    # framework allocator's peak on a GPU (NVML's figure, sampled, includes what the allocator reserved).


class Checker(Protocol):
    """A network built for ``dlarena verify``: canonical weights in and out, outputs and gradients.

    Everything runs in inference mode, so that every framework computes the same deterministic
    function: dropout is the identity and batch norm uses its running statistics (mean 0,
    variance 1 as built). Arrays cross in the canonical layouts of ``spec/weights.py``: batch-first,
    channels-first, in the checker's precision (float32 or float64; token ids int64). A float64
    checker builds every parameter and computes every intermediate in float64.
    """

    def load_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    def export_weights(self) -> dict[str, np.ndarray]: ...

    def trainable_params(self) -> int: ...

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Logits for a batch."""

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """The recipe's loss and its gradient with respect to every canonical parameter."""


class Trainer(Protocol):
    """A network with its recipe's optimizer, trained on batches the worker feeds (``accuracy``).

    The worker loads the starting weights (drawn in NumPy by ``spec.weights.initial_weights``, the
    same for every framework), then alternates ``train_step`` over an epoch's batches with
    ``predict`` over the test set. Arrays cross in the canonical layouts of ``spec/weights.py``:
    channels-first float32 images, int64 token ids and labels. Every training batch has the same
    size (only complete batches are trained) and so has every ``predict`` batch (the worker pads the
    last one), so that compiled frameworks compile each step once.
    """

    def load_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> Any:
        """One step in training mode (dropout on); returns the loss as something ``float()`` reads.

        Reading it may wait for the device, so the worker reads the losses once per epoch.
        """

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Logits in inference mode (dropout off, batch norm on running statistics), as NumPy."""

    def sync(self) -> None: ...

    def trainable_params(self) -> int: ...

    def parity(self) -> Parity: ...


class Backend(Protocol):
    name: str

    def version(self) -> str: ...

    def prepare(self, request: StepRequest) -> Runner:
        """Build the network, its optimizer and a synthetic batch; raise Unsupported or Unavailable."""

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> Checker:
        """Build the network for verification in ``precision``; raise Unsupported or Unavailable."""

    def trainer(self, request: StepRequest) -> Trainer:
        """Build the network and its optimizer for the accuracy scenario; raise Unsupported or Unavailable."""

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        """``a @ b`` (float32) by the framework's own ops on ``device``, as its steps run, as NumPy.

        The subnormal probe (dlarena_runner/denormals.py). Optional, read with getattr by the worker:
        ``flush_denormals() -> None``, the framework's switch to flush subnormal numbers to zero.
        """
