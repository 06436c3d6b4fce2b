"""`dlarena verify`: the same network, the same numbers, in every framework.

For each workload, every framework loads the same canonical weights and computes, in its own worker
process, the logits, the loss and the gradient of every parameter for the same canonical batch. Here,
without importing any framework, the outputs are compared with the NumPy float64 oracle and the
gradients with those of a reference framework. A pair that disagrees is a ``mismatch``.

Two passes per framework:

- **float32**, the precision timed: parameter count, weight round trip, logits and loss against
  the oracle.
- **float64**, for every framework that computes gradients: logits and loss against the oracle
  again, to a tolerance a thousand million times tighter, and the gradients across frameworks.

Why gradients are compared in float64: ReLU and max pooling make the gradient a discontinuous
function of the pre-activations. At the published sizes some pre-activation lies within float32
rounding of zero (AlexNet at batch 2: one ReLU input at 6.8e-8 of its layer's largest, below the
float32 unit roundoff of 6e-8), so two correct float32 frameworks that sum in different orders take
different branches there, and their gradients differ by 2e-2 in the layers before it. The float32
gradient is then not defined to better than that, by any tolerance that would still catch a wrong
layout. In float64 rounding is 5e8 times smaller than that margin, so every framework takes the
same branches and the gradients of a correct framework agree to near float64 rounding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlarena.frameworks.layout import max_relative_error
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.orchestrate.executor import Executor, LocalExecutor
from dlarena.orchestrate.orchestrator import classify
from dlarena.plan.cell import Cell, Measurement
from dlarena.spec import Workload, reference
from dlarena.spec.catalogue import CATALOGUE, get_workload
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs

# Tolerances, as norm-wise relative errors (layout.max_relative_error) against the float64 oracle or
# across frameworks. float32 rounds to 6e-8 relative; a dot product of n terms accumulates about
# sqrt(n) of that, and a network compounds it layer after layer. Measured with PyTorch at the
# published sizes: 2.5e-7 for ResNet-50, 5.8e-7 for AlexNet, 6.7e-7 for LSTM-32. 1e-4 leaves two
# orders of magnitude for legitimate differences of summation order, fused kernels and approximated
# transcendentals (XLA's float32 tanh), while a wrong layout or a missing bias gives errors of 1e-2 to 1.
FORWARD_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
# float64 rounds to 1.1e-16, 5e8 times finer than float32; the same growth gives errors near 1e-15
# (PyTorch, AlexNet: 1.2e-15), and float64 transcendentals are accurate to a few ulps. 1e-10 leaves
# five orders of magnitude and still catches differences far too small for the float32 check to
# see, such as a batch-norm epsilon of 1e-3 instead of 1e-5.
FORWARD64_TOLERANCE = 1e-10
LOSS64_TOLERANCE = 1e-10
# Gradients sum over the batch and every position as well, and a derivative is evaluated at the
# rounded forward values, hence two orders more.
GRADIENT64_TOLERANCE = 1e-8
# Small batches keep the float64 oracle quick; 4 samples still exercise every batch axis.
VERIFY_BATCH_SIZE = 4
# Published networks are large (FCN-5 logits: 26,752 per sample; OverFeat: 146 M parameters).
VERIFY_FULL_BATCH_SIZE = 2
# A worker builds, runs forward and backward once; the published networks need minutes on a CPU.
VERIFY_TIMEOUT_S = 1800.0
SEED = 0


@dataclass
class PairCheck:
    framework: str
    workload: str
    batch_size: int
    status: str  # ok, mismatch, failed, timeout, oom, unsupported, unavailable
    message: str = ""
    framework_version: str | None = None
    params: int | None = None
    forward_error: float | None = None  # float32 logits against the oracle
    loss_error: float | None = None
    forward64_error: float | None = None  # float64 logits against the oracle
    loss64_error: float | None = None
    gradient_error: float | None = None  # float64, against the reference framework
    gradient_reference: str | None = None
    worst_parameter: str | None = None
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Oracle:
    """What the float64 oracle expects for one workload and batch."""

    workload: Workload
    labels: np.ndarray
    logits: np.ndarray
    loss: float


def workload_names(names: Sequence[str], full: bool) -> list[str]:
    """Published names become their small twins unless ``full``; ``-small`` names, and networks with no
    twin (dlarena's own, small already), stay as they are."""
    chosen = []
    for name in names:
        workload = get_workload(name)
        if full:
            chosen.append(workload.variant_of or workload.name)
        elif workload.is_small or f"{name}-small" not in CATALOGUE:
            chosen.append(workload.name)
        else:
            chosen.append(f"{name}-small")
    return list(dict.fromkeys(chosen))


def _run_worker(
    check: PairCheck, precision: str, batch_size: int, threads: int, folder: Path, executor: Executor,
) -> tuple[str, str, dict[str, Any], Path | None]:
    """One verification worker: its status, message, result data and arrays (None unless ok)."""
    arrays = folder / f"{check.framework}-{precision}.npz"
    # A verification times nothing, so it may reuse compiled code: the cache is keyed by the graph and
    # the compiler's settings, so what it returns computes what a fresh compilation would.
    cell = Cell(framework=check.framework, workload=check.workload, scenario="infer", batch_size=batch_size,
                threads=threads, precision=precision, seed=SEED, measurement=Measurement(compile_cache="shared"))
    execution = executor.execute(cell, VERIFY_TIMEOUT_S, ["--verify", str(arrays)])
    status, message = classify(execution, VERIFY_TIMEOUT_S)
    data = execution.data or {}
    if status != "ok":
        check.stderr_tail = execution.output_tail
        return status, message, data, None
    differs = data.get("roundtrip_differs") or []
    if differs:
        check.problems.append(f"{precision} weights do not round-trip: {', '.join(differs[:3])}")
    return status, message, data, arrays


def _compare_outputs(
    check: PairCheck, arrays: Path, oracle: _Oracle, precision: str, tolerances: tuple[float, float],
) -> tuple[float, float, bool]:
    """Logits and loss against the oracle: their errors, and whether the worker computed gradients."""
    network, recipe = oracle.workload.network, oracle.workload.recipe
    forward_tolerance, loss_tolerance = tolerances
    with np.load(arrays) as stored:
        logits = stored["logits"]
        forward_error = max_relative_error(logits, oracle.logits)
        if logits.shape != oracle.logits.shape:
            check.problems.append(f"logits of shape {logits.shape}, expected {oracle.logits.shape}")
        elif logits.dtype != np.dtype(precision):
            check.problems.append(f"the {precision} check returned {logits.dtype} logits")
        elif forward_error > forward_tolerance:
            check.problems.append(f"{precision} logits differ from the oracle by {forward_error:.2e}")
        has_gradients = "loss" in stored.files
        # An inference-only framework computes no loss: the recipe's loss of its own logits is checked.
        if has_gradients:
            loss = float(stored["loss"])
        elif logits.shape == oracle.logits.shape:
            loss = reference.softmax_cross_entropy(network, recipe, logits.astype(np.float64), oracle.labels)
        else:
            loss = np.nan
    loss_error = abs(loss - oracle.loss) / max(abs(oracle.loss), np.finfo(np.float64).tiny)
    if not loss_error <= loss_tolerance:  # NaN included
        check.problems.append(f"{precision} loss differs from the oracle by {loss_error:.2e}")
    return forward_error, loss_error, has_gradients


def _check_framework(
    framework: str, oracle: _Oracle, batch_size: int, threads: int, folder: Path, executor: Executor,
) -> tuple[PairCheck, Path | None]:
    """Both passes for one framework; the float64 arrays come back if there are gradients to compare."""
    check = PairCheck(framework, oracle.workload.name, batch_size, status="unavailable")
    info = FRAMEWORKS[framework]
    if not info.is_installed():
        check.message = f"{framework} is not installed (pip install 'dlarena[{info.extra}]')"
        return check, None
    check.status, check.message, data, arrays = _run_worker(check, "float32", batch_size, threads, folder, executor)
    check.framework_version = data.get("framework_version")
    check.params = data.get("params")
    if arrays is None:
        return check, None
    if check.params != oracle.workload.network.params:
        check.problems.append(f"{check.params} parameters, the spec has {oracle.workload.network.params}")
    check.forward_error, check.loss_error, has_gradients = _compare_outputs(
        check, arrays, oracle, "float32", (FORWARD_TOLERANCE, LOSS_TOLERANCE))
    arrays.unlink()
    if not has_gradients:
        check.gradient_reference = "n/a: " + str(data.get("gradients_message", "no gradients"))
        return check, None
    status, message, _, arrays = _run_worker(check, "float64", batch_size, threads, folder, executor)
    if status == "unsupported":
        check.gradient_reference = f"n/a: {message}"
        return check, None
    if arrays is None:
        check.problems.append(f"the float64 check ended {status}: {message}")
        return check, None
    check.forward64_error, check.loss64_error, _ = _compare_outputs(
        check, arrays, oracle, "float64", (FORWARD64_TOLERANCE, LOSS64_TOLERANCE))
    return check, arrays


def _compare_gradients(check: PairCheck, arrays: Path, reference_arrays: Path, names: list[str]) -> None:
    worst_name, worst = None, 0.0
    with np.load(arrays) as mine, np.load(reference_arrays) as theirs:
        for name in names:
            key = f"grad/{name}"
            if key not in mine.files:
                check.problems.append(f"no gradient for {name}")
                continue
            error = max_relative_error(mine[key], theirs[key])
            if error >= worst:
                worst_name, worst = name, error
    check.gradient_error, check.worst_parameter = worst, worst_name
    if worst > GRADIENT64_TOLERANCE:
        check.problems.append(
            f"float64 gradient of {worst_name} differs from {check.gradient_reference}'s by {worst:.2e}")


def verify_workload(
    workload_name: str, frameworks: Sequence[str], batch_size: int, threads: int,
    executor: Executor | None = None, on_check: Callable[[PairCheck], None] | None = None,
) -> list[PairCheck]:
    executor = executor or LocalExecutor()
    workload = get_workload(workload_name)
    network = workload.network
    weights = canonical_weights(network, SEED)
    inputs, labels = canonical_batch(network, batch_size, SEED)
    logits = reference.forward(network, weights, inputs)
    loss = reference.softmax_cross_entropy(network, workload.recipe, logits, labels)
    oracle = _Oracle(workload, labels, logits, loss)
    names = [spec.name for spec in parameter_specs(network)]
    del weights

    checks: list[PairCheck] = []
    with tempfile.TemporaryDirectory(prefix="dlarena-verify-") as folder:
        with_gradients: list[tuple[PairCheck, Path]] = []
        for framework in frameworks:
            check, arrays = _check_framework(framework, oracle, batch_size, threads, Path(folder), executor)
            if arrays is not None:
                with_gradients.append((check, arrays))
            checks.append(check)
        # The reference for gradients: the first framework (registry order) whose own outputs agree
        # with the oracle; the oracle computes no gradients, so gradients are compared across frameworks.
        trusted = [(check, arrays) for check, arrays in with_gradients if not check.problems]
        if trusted:
            reference_check, reference_arrays = trusted[0]
            for check, arrays in with_gradients:
                if check is reference_check:
                    check.gradient_reference = "itself (the reference)" if len(with_gradients) > 1 else (
                        "n/a: no other framework to compare with")
                    continue
                check.gradient_reference = reference_check.framework
                _compare_gradients(check, arrays, reference_arrays, names)
    for check in checks:
        if check.status == "ok" and check.problems:
            check.status, check.message = "mismatch", "; ".join(check.problems)
        if on_check:
            on_check(check)
    return checks


def verify(
    frameworks: Sequence[str], workloads: Sequence[str], batch_size: int, threads: int,
    executor: Executor | None = None, on_check: Callable[[PairCheck], None] | None = None,
) -> list[PairCheck]:
    checks = []
    for workload in workloads:
        checks += verify_workload(workload, frameworks, batch_size, threads, executor, on_check)
    return checks

