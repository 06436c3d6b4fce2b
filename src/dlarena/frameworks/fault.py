"""A test-only framework that injects faults, so the orchestrator's handling of them can be proven.

Registered only when ``DLARENA_FAULT_FRAMEWORKS=1`` is set (see registry.py). Its ``none`` variant is
a real, tiny NumPy computation that measures like any framework, so framework-free tests can run
whole sweeps. Children it starts write their process ids to ``$DLARENA_FAULT_PIDFILE`` (if set), so
a test can check that nothing outlives a killed cell. The ``gate`` variant runs like ``none`` once
the file ``$DLARENA_FAULT_GATE`` exists, and waits for it before its first step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np

from dlarena.frameworks.base import Parity, StepRequest, Unavailable, Unsupported, require_check_precision
from dlarena.frameworks.registry import FAULTS
from dlarena.spec import Workload, reference

# A comma-separated list of workloads: when set, a fault strikes a verification only on those, and
# the others compute like `none` (a verify worker checks many networks; one may take it down).
FAULT_ONLY_VARIABLE = "DLARENA_FAULT_ONLY"
# The faults that a verification meets when it computes its logits, as a timed step meets them.
CHECK_STEP_FAULTS = ("hang", "segfault", "exit")
# How often the "gate" variant looks for its gate file: quick enough that a test does not notice.
GATE_POLL_S = 0.05
# How much the "grow" variant allocates at a time, touching every page: past any sane limit in seconds.
GROW_STEP_BYTES = 64 << 20
# The error the "wrong" variant puts into its logits: far beyond verify's tolerances, as a
# misplaced bias or a transposed kernel would be.
WRONG_SCALE = 1.01
# The size of the matrix product one step of the healthy variant computes: small enough for fast
# tests, large enough that a step takes a measurable tens of microseconds.
STEP_MATRIX_SIZE = 64
# The fault framework's stand-in learner (a softmax regression) takes SGD steps this large: on the
# digits' [0, 1] pixels it reaches about 95% test accuracy in a few epochs.
FAULT_TRAINER_LR = 0.5


class _Runner:
    def __init__(self, request: StepRequest, fault: str) -> None:
        self.fault = fault
        rng = np.random.default_rng(request.seed)
        self.matrix = rng.standard_normal((STEP_MATRIX_SIZE, STEP_MATRIX_SIZE))
        self.threads = request.threads
        self.held: list[np.ndarray] = []
        self.opened = False  # the gate variant: its gate was found open, it now runs like `none`
        self.spinner: threading.Thread | None = None  # the threads variant's extra busy thread

    def step(self) -> None:
        if self.fault == "hang":
            _spawn_child()
            while True:
                time.sleep(1)
        if self.fault == "gate" and not self.opened:
            _wait_for_gate()
            self.opened = True
        if self.fault == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.fault == "exit":
            os._exit(3)
        while self.fault == "grow":  # a runaway allocation, until something stops it
            self.held.append(np.ones(GROW_STEP_BYTES, dtype=np.uint8))
            time.sleep(0.01)
        if self.fault == "oom-error":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if self.fault == "threads" and self.spinner is None:  # a framework that ignores its thread limit
            self.spinner = threading.Thread(target=_spin, daemon=True)
            self.spinner.start()
        self.matrix = np.tanh(self.matrix @ self.matrix)

    def sync(self) -> None:
        pass

    def trainable_params(self) -> int:
        return int(self.matrix.size)

    def parity(self) -> Parity:
        return Parity(threads=self.threads, dtype=str(self.matrix.dtype), execution="eager")


class _Trainer(_Runner):
    """A softmax regression on the flattened inputs, trained by plain SGD in NumPy.

    Not the workload's network: a real learner small enough that framework-free tests can run the
    whole accuracy scenario (data, loop, store, report) in a second. Faults strike at the first step.
    """

    def __init__(self, request: StepRequest, fault: str) -> None:
        super().__init__(request, fault)
        network = request.workload.network
        features = int(np.prod(network.input_shape))
        self.weights = np.zeros((features, network.classes))
        self.bias = np.zeros(network.classes)
        self.lr = FAULT_TRAINER_LR

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Starting weights are the network's; the regression starts from zero whatever they are."""

    def trainable_params(self) -> int:
        return int(self.weights.size + self.bias.size)

    def train_step(self, inputs: np.ndarray, labels: np.ndarray) -> float:
        if self.fault != "none":
            self.step()  # the same faults as a timed step
        flat = inputs.reshape(len(inputs), -1)
        logits = flat @ self.weights + self.bias
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))
        probabilities[np.arange(len(labels)), labels] -= 1.0
        self.weights -= self.lr * flat.T @ probabilities / len(labels)
        self.bias -= self.lr * probabilities.mean(axis=0)
        return loss

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        result: np.ndarray = inputs.reshape(len(inputs), -1) @ self.weights + self.bias
        return result


def _spin() -> None:
    """Keep a second core busy: NumPy's matrix product releases the interpreter's lock."""
    matrix = np.ones((STEP_MATRIX_SIZE * 2, STEP_MATRIX_SIZE * 2))
    while True:
        matrix @ matrix


def _wait_for_gate() -> None:
    """The gate variant: start a child (so the test sees the cell running, by the pidfile) and wait
    until the file named by ``$DLARENA_FAULT_GATE`` exists (forever if it is not set), then go on as
    the healthy variant. A test holds a cell running for exactly as long as it needs, by a state it
    controls, instead of racing a timeout."""
    _spawn_child()
    gate = os.environ.get("DLARENA_FAULT_GATE")
    while not (gate and os.path.exists(gate)):
        time.sleep(GATE_POLL_S)


def _spawn_child() -> None:
    child = subprocess.Popen(["sleep", "600"])
    pidfile = os.environ.get("DLARENA_FAULT_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as handle:
            handle.write(f"{child.pid}\n")


class _Checker:
    """Verification through the NumPy oracle itself, in float32; the ``wrong`` variant scales it."""

    def __init__(self, workload: Workload, fault: str, runner: _Runner | None = None) -> None:
        self.workload, self.fault, self.runner = workload, fault, runner
        self.weights: dict[str, np.ndarray] = {}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = {name: value.copy() for name, value in weights.items()}

    def export_weights(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.weights.items()}

    def trainable_params(self) -> int:
        return self.workload.params

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        if self.runner is not None and self.fault in CHECK_STEP_FAULTS:
            self.runner.step()
        logits = reference.forward(self.workload.network, self.weights, inputs).astype(np.float32)
        return logits * WRONG_SCALE if self.fault == "wrong" else logits

    def loss_and_gradients(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        raise Unsupported("the fault framework computes no gradients")


class Backend:
    def __init__(self, threads: int, fault: str = "none") -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; valid: {', '.join(FAULTS)}")
        self.name = f"fault-{fault}"
        self.fault = fault
        self.threads = threads

    def version(self) -> str:
        return np.__version__

    def prepare(self, request: StepRequest) -> _Runner:
        if self.fault == "raise":
            raise RuntimeError("injected failure while building the network")
        if self.fault == "unsupported":
            raise Unsupported("the fault framework cannot express anything")
        if self.fault == "unavailable":
            raise Unavailable("the fault framework has no such device")
        return _Runner(request, self.fault)

    def trainer(self, request: StepRequest) -> _Trainer:
        self.prepare(request)  # the same faults at build time
        return _Trainer(request, self.fault)

    def denormal_product(self, a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
        # NumPy's BLAS keeps subnormals and NumPy has no switch (no flush_denormals): a flush cell
        # of a fault framework is unsupported, as a real framework without one would be.
        product: np.ndarray = a @ b
        return product

    def checker(self, workload: Workload, device: str, precision: str = "float32") -> _Checker:
        require_check_precision(precision, self.name, ("float32",))
        only = os.environ.get(FAULT_ONLY_VARIABLE)
        if only and workload.name not in only.split(","):
            return _Checker(workload, "none")
        runner = self.prepare(StepRequest(workload, "infer", 1, device, self.threads, "float32", 0))  # same faults
        return _Checker(workload, self.fault, runner)
