"""`dlarena verify`: the same network, the same numbers, in every framework.

For each workload, every framework loads the same canonical weights and computes, in its own worker
process, the logits, the loss and the gradient of every parameter for the same canonical batch. Here,
without importing any framework, the logits and loss are compared with the NumPy float64 oracle and
the gradients with those of a reference framework. A pair that disagrees is a ``mismatch``.
"""

from __future__ import annotations

import json
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
from dlarena.plan.cell import Cell
from dlarena.spec import Workload, reference
from dlarena.spec.catalogue import get_workload
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs

# Tolerances, as norm-wise relative errors (layout.max_relative_error) against float64 or across
# frameworks. float32 rounds to 6e-8 relative; a dot product of n terms accumulates about sqrt(n)
# of that, and a network compounds it layer after layer. Measured with PyTorch at the published
# sizes: 2.5e-7 for ResNet-50, 5.8e-7 for AlexNet, 6.7e-7 for LSTM-32. 1e-4 leaves two orders of
# magnitude for legitimate differences of summation order, fused kernels and approximated
# transcendentals, while a wrong layout or a missing bias gives errors of 1e-2 to 1. Gradients sum
# over the batch and every spatial position as well, and transcendental approximations (XLA's tanh,
# oneDNN's sigmoid) differ more in their derivatives, hence one order more.
FORWARD_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-3
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
    forward_error: float | None = None
    loss_error: float | None = None
    gradient_error: float | None = None
    gradient_reference: str | None = None
    worst_parameter: str | None = None
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def workload_names(names: Sequence[str], full: bool) -> list[str]:
    """Published names become their small twins unless ``full``; ``-small`` names stay as they are."""
    chosen = []
    for name in names:
        workload = get_workload(name)
        if full:
            chosen.append(workload.variant_of or workload.name)
        else:
            chosen.append(workload.name if workload.is_small else get_workload(f"{name}-small").name)
    return list(dict.fromkeys(chosen))


def _run_framework(
    framework: str, workload: str, batch_size: int, threads: int, folder: Path, executor: Executor,
) -> tuple[PairCheck, Path | None]:
    check = PairCheck(framework, workload, batch_size, status="unavailable")
    info = FRAMEWORKS[framework]
    if not info.is_installed():
        check.message = f"{framework} is not installed (pip install 'dlarena[{info.extra}]')"
        return check, None
    arrays = folder / f"{framework}.npz"
    cell = Cell(framework=framework, workload=workload, scenario="infer", batch_size=batch_size,
                threads=threads, seed=SEED)
    execution = executor.execute(cell, VERIFY_TIMEOUT_S, ["--verify", str(arrays)])
    check.status, check.message = classify(execution, VERIFY_TIMEOUT_S)
    data = execution.data or {}
    check.framework_version = data.get("framework_version")
    check.params = data.get("params")
    if check.status != "ok":
        check.stderr_tail = execution.output_tail
        return check, None
    differs = data.get("roundtrip_differs") or []
    if differs:
        check.problems.append(f"weights do not round-trip: {', '.join(differs[:3])}")
    if not data.get("gradients"):
        check.gradient_reference = "n/a: " + str(data.get("gradients_message", "no gradients"))
    return check, arrays


def _compare_outputs(
    check: PairCheck, arrays: Path, workload: Workload, labels: np.ndarray, expected_logits: np.ndarray,
    expected_loss: float,
) -> bool:
    """Forward, loss and parameter count against the oracle; True if gradients exist to compare."""
    network, recipe = workload.network, workload.recipe
    if check.params != network.params:
        check.problems.append(f"{check.params} parameters, the spec has {network.params}")
    with np.load(arrays) as stored:
        logits = stored["logits"]
        check.forward_error = max_relative_error(logits, expected_logits)
        if logits.shape != expected_logits.shape:
            check.problems.append(f"logits of shape {logits.shape}, expected {expected_logits.shape}")
        elif check.forward_error > FORWARD_TOLERANCE:
            check.problems.append(f"logits differ from the oracle by {check.forward_error:.2e}")
        has_gradients = "loss" in stored.files
        # An inference-only framework computes no loss: the recipe's loss of its own logits is checked.
        loss = float(stored["loss"]) if has_gradients else reference.softmax_cross_entropy(
            network, recipe, logits.astype(np.float64), labels) if logits.shape == expected_logits.shape else np.nan
    check.loss_error = abs(loss - expected_loss) / max(abs(expected_loss), np.finfo(np.float64).tiny)
    if not check.loss_error <= LOSS_TOLERANCE:  # NaN included
        check.problems.append(f"loss differs from the oracle by {check.loss_error:.2e}")
    return has_gradients


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
    if worst > GRADIENT_TOLERANCE:
        check.problems.append(f"gradient of {worst_name} differs from {check.gradient_reference}'s by {worst:.2e}")


def verify_workload(
    workload_name: str, frameworks: Sequence[str], batch_size: int, threads: int,
    executor: Executor | None = None, on_check: Callable[[PairCheck], None] | None = None,
) -> list[PairCheck]:
    executor = executor or LocalExecutor()
    workload = get_workload(workload_name)
    network = workload.network
    weights = canonical_weights(network, SEED)
    inputs, labels = canonical_batch(network, batch_size, SEED)
    expected_logits = reference.forward(network, weights, inputs)
    expected_loss = reference.softmax_cross_entropy(network, workload.recipe, expected_logits, labels)
    names = [spec.name for spec in parameter_specs(network)]
    del weights

    checks: list[PairCheck] = []
    with tempfile.TemporaryDirectory(prefix="dlarena-verify-") as folder:
        with_gradients: list[tuple[PairCheck, Path]] = []
        for framework in frameworks:
            check, arrays = _run_framework(framework, workload_name, batch_size, threads, Path(folder), executor)
            if arrays is not None and _compare_outputs(check, arrays, workload, labels, expected_logits, expected_loss):
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


def check_data(check: PairCheck) -> str:
    return json.dumps({"problems": check.problems, "stderr_tail": check.stderr_tail[-2000:]})
