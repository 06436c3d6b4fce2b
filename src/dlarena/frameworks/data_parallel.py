"""Data-parallel training (the train-dp scenario), written once for every framework with a runtime for it.

A train-dp cell's worker is its replica 0. Before it limits its own cores it starts the other
replicas (``python -m dlarena.worker --cell ... --replica R --rendezvous HOST:PORT``), each a process
with ``threads`` cores of its own, in its process group, so that a kill takes them all. Every replica
builds the network from the same canonical starting weights, takes its slice of the global synthetic
batch, and joins the framework's data-parallel runtime (``kernel.Model.join``, the one thing a
framework module supplies). Then:

1. The check. Every replica computes its slice's loss and gradient through the runtime, which
   averages the gradients across replicas as it does in every training step; replica 0 compares that
   average (what each replica's optimizer then applies, so the updated weights agree exactly when it
   agrees) and the mean of the slices' losses with one process's on the whole batch. In inference
   mode, as `dlarena verify` computes gradients: dropout draws differ between one process and several,
   so training mode could not be compared.
2. The timed steps, in lockstep. Every replica takes the first step and the warm-up steps; replica 0
   decides from the warm-up how many steps fill the cell's measured time (``planned_steps``) and tells
   the others; all take that many and replica 0 times them. A data-parallel step ends for every
   replica together (the gradients are reduced inside it), so replica 0's clock times the step.

The replicas talk to replica 0 on their standard input and output, one JSON object a line; anything
they print goes to standard error. Replica 0 watches them: one that exits early fails the cell at once
(``Others.watch``) instead of leaving replica 0 waiting in a collective until the cell's time limit.

The worker imports this module before it limits its threads (replica 0 starts the others first), so
nothing here imports NumPy, the spec or a framework at module level.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from dlarena.plan.cell import Measurement

if TYPE_CHECKING:
    from dlarena.frameworks.base import StepRequest
    from dlarena_runner.timing import Timings

# The check's limits, in float32 (the replicas' gradients are summed across processes in another
# order than one process sums the whole batch; both are float32 sums of the same terms). A sum of n
# terms reordered moves by at most about n * u * sum|terms| (u = 2^-24), and the reductions here
# (over a batch, over a convolution's positions) are hundreds to thousands long, so the limits allow
# 2^-24 * 2,000 = 1.2e-4 of the largest gradient element; the loss, a mean of the slices' means,
# is one short reordered sum.
CHECK_GRADIENT_TOLERANCE = 1.2e-4
CHECK_LOSS_TOLERANCE = 1e-5
# How often replica 0 looks at the other replicas while it works: an early exit is seen within this.
WATCH_INTERVAL_S = 0.2


class ReplicaError(Exception):
    """Another replica ended before the cell did, or spoke out of turn."""


@dataclass(frozen=True)
class Replicas:
    """Where this process stands among a cell's replicas."""

    rank: int
    size: int
    address: str  # HOST:PORT where replica 0's runtime meets the others (torch's TCP store, ...)

    @property
    def leader(self) -> bool:
        return self.rank == 0


def rendezvous_address() -> str:
    """A free port on this machine for the replicas to meet at (replica 0 picks it before starting them)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def start_others(cell_json: str, size: int, address: str) -> Others:
    """Replicas 1..size-1 of the cell, started by replica 0 before it limits its own cores."""
    processes = [subprocess.Popen(
        [sys.executable, "-m", "dlarena.worker", "--cell", cell_json, "--replica", str(rank), "--rendezvous", address],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) for rank in range(1, size)]
    return Others(processes)


class Others:
    """Replica 0's side of the conversation with the other replicas."""

    def __init__(self, processes: list[subprocess.Popen[str]]) -> None:
        self.processes = processes
        self.finished = threading.Event()

    def send(self, **message: Any) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()

    def receive(self) -> list[dict[str, Any]]:
        """One message from each replica, in rank order."""
        messages = []
        for rank, process in enumerate(self.processes, start=1):
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise ReplicaError(f"replica {rank} ended (exit code {process.wait()}) before the cell did; its"
                                   " output is above")
            message: dict[str, Any] = json.loads(line)
            if "error" in message:
                raise ReplicaError(f"replica {rank} failed: {message['error']}")
            messages.append(message)
        return messages

    def watch(self, on_failure: Callable[[str], None]) -> None:
        """Call ``on_failure`` with a sentence as soon as a replica exits with an error before ``finish``."""
        def look() -> None:
            while not self.finished.wait(WATCH_INTERVAL_S):
                for rank, process in enumerate(self.processes, start=1):
                    code = process.poll()
                    if code not in (None, 0):
                        on_failure(f"replica {rank} exited with code {code} before the cell ended; its output"
                                   " is above")
                        return
        threading.Thread(target=look, name="replica-watch", daemon=True).start()

    def finish(self) -> None:
        """The replicas were told everything: wait for them to end, each with exit code 0."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        codes = [process.wait() for process in self.processes]
        self.finished.set()
        for rank, code in enumerate(codes, start=1):
            if code != 0:
                raise ReplicaError(f"replica {rank} exited with code {code}; its output is above")


class Leader:
    """A replica other than 0's side: it answers replica 0 on what was its standard output."""

    def __init__(self) -> None:
        self.out: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # a framework's prints go to standard error, never into the conversation

    def send(self, **message: Any) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def receive(self) -> dict[str, Any]:
        line = sys.stdin.readline()
        if not line:
            raise ReplicaError("replica 0 ended before this replica did")
        message: dict[str, Any] = json.loads(line)
        return message


def kill_the_cell(write_failure: Callable[[str], None]) -> Callable[[str], None]:
    """What replica 0 does when a replica fails under it: store the failure, then end every replica of
    the cell (its process group) rather than wait in a collective for the cell's time limit."""
    def fail(message: str) -> None:
        write_failure(message)
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return fail


def planned_steps(settings: Measurement, warmup_s: list[float], first_step_s: float) -> int:
    """How many timed steps fill the cell's measured time, from the warm-up (the others cannot be told
    to stop mid-loop, as a single worker's loop stops, so the count is fixed before the loop)."""
    typical = statistics.median(warmup_s) if warmup_s else first_step_s
    wanted = settings.min_steps if typical <= 0 else max(settings.min_steps, math.ceil(settings.min_time_s / typical))
    ceiling = settings.max_steps if typical <= 0 else min(settings.max_steps, max(
        settings.min_steps, math.floor(settings.max_time_s / typical)))
    return max(1, min(wanted, ceiling))


def check(backend: Any, request: StepRequest, runner: Any, replicas: Replicas,
          talk: Others | Leader) -> dict[str, Any] | None:
    """The data-parallel gradient and loss against one process's on the whole batch (replica 0 returns
    the figures; the others send their loss and return None). Raises nothing: a failed check is data."""
    import numpy as np

    from dlarena.frameworks.kernel import KernelChecker

    inputs, labels = runner.shard_batch
    loss, gradients = KernelChecker(runner.model).loss_and_gradients(inputs, labels)
    if not replicas.leader:
        assert isinstance(talk, Leader)
        talk.send(loss=float(loss))
        return None
    assert isinstance(talk, Others)
    losses = [float(loss), *(float(message["loss"]) for message in talk.receive())]
    reference = backend.checker(request.workload, request.device, request.precision)
    reference.load_weights(runner.starting_weights)
    loss_ref, gradients_ref = reference.loss_and_gradients(*runner.whole_batch)
    largest = max(float(np.max(np.abs(value))) for value in gradients_ref.values()) or 1.0
    differences = {name: float(np.max(np.abs(np.asarray(gradients[name], np.float64)
                                             - np.asarray(gradients_ref[name], np.float64))))
                   for name in gradients_ref}
    worst_name = max(differences, key=lambda name: differences[name])
    loss_dp = float(np.mean(losses))
    reference_loss = float(loss_ref)
    figures: dict[str, Any] = {
        "loss": loss_dp, "loss_reference": reference_loss,
        "loss_error": abs(loss_dp - reference_loss) / max(abs(reference_loss), float(np.finfo(np.float32).tiny)),
        "gradient_error": differences[worst_name] / largest, "worst_parameter": worst_name,
        "loss_tolerance": CHECK_LOSS_TOLERANCE, "gradient_tolerance": CHECK_GRADIENT_TOLERANCE,
    }
    figures["passed"] = (figures["loss_error"] <= CHECK_LOSS_TOLERANCE
                         and figures["gradient_error"] <= CHECK_GRADIENT_TOLERANCE)
    return figures


def lockstep(runner: Any, settings: Measurement, replicas: Replicas, talk: Others | Leader) -> Timings:
    """The first step, the warm-up and the planned steps on every replica (dlarena_runner's timed loop,
    its count fixed after the warm-up by replica 0 and sent to the others); replica 0's times."""
    from dlarena_runner.timing import run_timed

    def steps(timings: Timings) -> int:
        if isinstance(talk, Others):
            count = planned_steps(settings, timings.warmup_s, timings.first_step_s)
            talk.send(steps=count)
            return count
        return int(talk.receive()["steps"])

    return run_timed(runner.step, runner.sync, settings, fixed_steps=steps)


def require_runtime(backend: Any) -> None:
    from dlarena.frameworks.base import Unsupported

    if not hasattr(backend, "prepare_replica"):
        raise Unsupported("this framework's module has no data-parallel runtime in dlarena")
