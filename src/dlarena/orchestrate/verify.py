"""`dlarena verify`: the same network, the same numbers, in every framework.

Every framework loads the same canonical weights and computes, in its own worker processes, the
logits, the loss and the gradient of every parameter for the same canonical batch. Here, without
importing any framework, the outputs are compared with the NumPy float64 oracle and the gradients
with those of a reference framework. A pair that disagrees is a ``mismatch``, and its timings are
struck out.

Two passes per framework, each one worker process for all the networks (importing a framework
costs seconds, computing a small twin milliseconds; a network that fails, is unsupported or takes
the worker down leaves the others checked):

- **float32**, the precision timed: parameter count, weight round trip, logits and loss against
  the oracle, and the gradients against the reference framework's float64 gradients.
- **float64**, for every framework that trains (beside the float32 pass; it counts where that one
  computed gradients): logits and loss against the oracle again, to a tolerance a thousand million
  times tighter, and the gradients across frameworks.

Whether a pair's timings count is decided by what was timed, the float32 computation:

- Its logits and loss must match the oracle, and its gradients the float64 reference within
  GRADIENT32_TOLERANCE. ReLU and max pooling make the gradient a discontinuous function of the
  pre-activations: where some ReLU input (or a max-pool window's runner-up) lies within float32
  rounding of the kink, two correct float32 frameworks that sum in different orders may take
  different branches, and one flipped unit moves the gradients of every earlier layer by up to
  2e-2 (AlexNet at batch 2: a ReLU input at 6.8e-8 of its layer's largest). So a float32 gradient
  that misses the tolerance is a mismatch only where the oracle shows every kink farther than
  FLOAT32_KINK_MARGIN (``reference.branch_margin``). Nearer, the float32 gradient is not defined to
  that tolerance: the pair says so, and the float64 gradients decide, as they always did.
- A float64 defect is weighed against its float32 twin. The framework runs the same code of ours
  in both precisions, so a float64 result wrong by more than the float32 tolerance while the
  float32 one is right is a bug of the framework in float64 (torch 2.13's Inductor: zero conv
  gradients in float64): the float32 timings count, and the pair reports the bug with the
  framework's version. A float64 defect smaller than the float32 tolerance (a batch-norm epsilon of
  1e-3 instead of 1e-5) could be in float32 too, unseen: a mismatch, as before. Where the float32
  gradients are not verified, every float64 defect is a mismatch.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlarena.frameworks.layout import max_relative_error
from dlarena.frameworks.precision import precision as precision_of
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.orchestrate.executor import Executor, LocalExecutor
from dlarena.orchestrate.orchestrator import classify
from dlarena.plan.cell import Cell, Measurement
from dlarena.spec import Workload, reference
from dlarena.spec.catalogue import CATALOGUE, get_workload
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs
from dlarena_runner.record import VERIFY_PROGRESS_FILE

# Tolerances, as norm-wise relative errors (layout.max_relative_error) against the float64 oracle or
# across frameworks. float32 rounds to 6e-8 relative; a dot product of n terms accumulates about
# sqrt(n) of that, and a network compounds it layer after layer. Measured with PyTorch at the
# published sizes: 2.5e-7 for ResNet-50, 5.8e-7 for AlexNet, 6.7e-7 for LSTM-32. 1e-4 leaves two
# orders of magnitude for legitimate differences of summation order, fused kernels and approximated
# transcendentals (XLA's float32 tanh), while a wrong layout or a missing bias gives errors of 1e-2 to 1.
FORWARD_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
# float32 gradients against the reference framework's float64 gradients: the same rule as the
# forward tolerance. Measured on every small twin at batch 4 (`dlarena verify --workloads all`, the
# `gradients f32` column, 2026-12-01), the worst errors of correct float32 gradients: torch 2.0e-6,
# torch-compile 2.3e-6, jax 1.9e-6, tensorflow 2.1e-6, tensorflow-xla 1.8e-6, keras-jax 2.0e-6,
# keras-torch and keras-tensorflow at most 2.4e-6 (the deepest networks, googlenet-small and
# resnet50-small); 1e-4 leaves a factor of 40
# for other machines' kernels and the published sizes' longer sums, and stays a hundred times below
# the 1e-2 to 1 of a wrong layout, a missing bias or a flipped gate order.
GRADIENT32_TOLERANCE = 1e-4
# Where the float32 gradient is defined to that tolerance: every ReLU input, and every max-pool
# window's runner-up, farther from the kink than this, relative to its layer's largest magnitude
# (reference.branch_margin). The largest float32 rounding error at those places, relative to the
# same scale, is 7.9e-7 (NumPy float32 against float64, every small twin at batch 4: googlenet-small);
# fused or Winograd kernels round a few times worse, and 1e-5 leaves a factor of 12 for that.
FLOAT32_KINK_MARGIN = 1e-5
# float64 rounds to 1.1e-16, 5e8 times finer than float32; the same growth gives errors near 1e-15
# (PyTorch, AlexNet: 1.2e-15), and float64 transcendentals are accurate to a few ulps. 1e-10 leaves
# five orders of magnitude and still catches differences far too small for the float32 check to
# see, such as a batch-norm epsilon of 1e-3 instead of 1e-5.
FORWARD64_TOLERANCE = 1e-10
LOSS64_TOLERANCE = 1e-10
# Gradients sum over the batch and every position as well, and a derivative is evaluated at the
# rounded forward values, hence two orders more.
GRADIENT64_TOLERANCE = 1e-8
# bfloat16 keeps 8 significant bits: its unit roundoff is 2^-8 = 3.9e-3, 2^16 times float32's 2^-24.
BF16_UNIT_ROUNDOFF = 2.0**-8
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Measured with torch 2.13 on the CPU (2026-12-02), every small twin at batch 4, in bfloat16 and in
# mixed-bf16: logits 2.8e-3 to 1.2e-2 from the oracle (0.7 to 3 roundoffs; bert-base-small the worst),
# losses 1e-6 to 7e-3; gradients of the networks without ReLU or max pooling 6.8e-3 to 3.4e-2 from
# torch's float64 ones (gpt2-124m-small's layer-norm gains the worst). Every one of the others has a
# kink within bfloat16 rounding and gradients 0.15 to 0.66 off: not defined to that precision, so
# float64 decides for them, as it does for float32 near a kink (the margin scaled by the ratio of the
# two roundoffs).
# - Ceilings: 16 roundoffs (6.3e-2) for logits and loss, a factor of 5 over the worst measured and what
#   one rounding to an 8-bit float (e4m3, roundoff 2^-4) costs already; 32 (0.125) for gradients, a
#   factor of 3.7, still far below the errors of order one that a wrong layout or a dropped term makes.
# - Floor: a bfloat16 computation rounds its weights, its inputs and every product's operands, so its
#   logits cannot come much closer to the oracle than a roundoff. 1/16 of one (2.4e-4) is 11 times below
#   the closest measured and 2,000 times above float32's 1e-7: logits closer than that were computed
#   in more than bfloat16, whatever the framework says.
BF16_FORWARD_TOLERANCE = 16 * BF16_UNIT_ROUNDOFF
BF16_LOSS_TOLERANCE = 16 * BF16_UNIT_ROUNDOFF
BF16_GRADIENT_TOLERANCE = 32 * BF16_UNIT_ROUNDOFF
BF16_FORWARD_FLOOR = BF16_UNIT_ROUNDOFF / 16
# float16 keeps 11 significant bits (roundoff 2^-11 = 4.9e-4): the same multiples of its roundoff, by
# the same argument. Not measured: float16 cells run on a GPU only, and this project's machines have
# none; a float16 verdict is the first measurement of these limits, to be checked against them.
FP16_UNIT_ROUNDOFF = 2.0**-11


@dataclass(frozen=True)
class Tolerances:
    """What the timed precision's pass is held to (against the oracle, and the reference's float64 gradients)."""

    forward: float
    loss: float
    gradient: float
    kink_margin: float  # reference.branch_margin beyond which its gradient is defined to that tolerance
    forward_floor: float = 0.0  # logits closer to the oracle than this were computed in a higher precision


TOLERANCES: dict[str, Tolerances] = {
    "float32": Tolerances(FORWARD_TOLERANCE, LOSS_TOLERANCE, GRADIENT32_TOLERANCE, FLOAT32_KINK_MARGIN),
    **{name: Tolerances(BF16_FORWARD_TOLERANCE, BF16_LOSS_TOLERANCE, BF16_GRADIENT_TOLERANCE,
                        FLOAT32_KINK_MARGIN * BF16_UNIT_ROUNDOFF / FLOAT32_UNIT_ROUNDOFF, BF16_FORWARD_FLOOR)
       for name in ("bfloat16", "mixed-bf16")},
    **{name: Tolerances(16 * FP16_UNIT_ROUNDOFF, 16 * FP16_UNIT_ROUNDOFF, 32 * FP16_UNIT_ROUNDOFF,
                        FLOAT32_KINK_MARGIN * FP16_UNIT_ROUNDOFF / FLOAT32_UNIT_ROUNDOFF, FP16_UNIT_ROUNDOFF / 16)
       for name in ("float16", "mixed-fp16")},
}
# Small batches keep the float64 oracle quick; 4 samples still exercise every batch axis.
VERIFY_BATCH_SIZE = 4
# Published networks are large (FCN-5 logits: 26,752 per sample; OverFeat: 146 M parameters).
VERIFY_FULL_BATCH_SIZE = 2
# A worker's limit is this per network it checks: the published networks need minutes on a CPU
# (and a small twin under torch-compile, compiled cold on a busy 2-core machine, about a minute).
VERIFY_TIMEOUT_S = 1800.0
# How many networks one worker checks: every small twin in one process (the import dominates);
# one published network per process, so that a few GB of float64 arrays are compared and deleted
# before the next network's are written (their compute dominates the import anyway).
FULL_NETWORKS_PER_WORKER = 1
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
    gradient32_error: float | None = None  # float32 gradients against the reference's float64 ones
    forward64_error: float | None = None  # float64 logits against the oracle
    loss64_error: float | None = None
    gradient_error: float | None = None  # float64, against the reference framework
    gradient_reference: str | None = None
    worst_parameter: str | None = None
    # The float32 gradients: "verified", "not defined to float32 rounding: ...", "n/a: ...", or "".
    float32_gradients: str = ""
    kink_margin: float | None = None  # reference.branch_margin of the oracle's forward pass
    problems: list[str] = field(default_factory=list)  # each one strikes the pair's timings out
    # Defects in float64 only, the precision not timed, where the float32 computation is verified:
    # {"precision", "kind" ("wrong numbers" or "failed"), "detail"}. They leave the timings counted.
    framework_bugs: list[dict[str, str]] = field(default_factory=list)
    stderr_tail: str = ""
    # The precision checked and timed (TOLERANCES): float32, or bfloat16 and mixed-bf16, beside float64.
    precision: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Oracle:
    """What the float64 oracle expects for one workload and batch."""

    workload: Workload
    labels: np.ndarray
    logits: np.ndarray
    loss: float
    margin: reference.BranchMargin
    names: list[str]  # every canonical parameter


@dataclass
class _Outcome:
    """One network's result from one worker: its status, what the worker said, its arrays if ok."""

    status: str
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    arrays: Path | None = None
    framework_version: str | None = None
    stderr_tail: str = ""


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


def _oracle(name: str, batch_size: int) -> _Oracle:
    workload = get_workload(name)
    network = workload.network
    weights = canonical_weights(network, SEED)
    inputs, labels = canonical_batch(network, batch_size, SEED)
    logits = reference.forward(network, weights, inputs)
    loss = reference.softmax_cross_entropy(network, workload.recipe, logits, labels)
    margin = reference.branch_margin(network, weights, inputs)
    return _Oracle(workload, labels, logits, loss, margin, [spec.name for spec in parameter_specs(network)])


def _read_progress(folder: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """What a worker that did not finish had written: each finished network's record, and the
    network it had started last without finishing (None if it died between networks)."""
    records: dict[str, dict[str, Any]] = {}
    current = None
    try:
        lines = (folder / VERIFY_PROGRESS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return records, None
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # the last line, cut by the crash
            continue
        name = event.pop("workload", None)
        if event.pop("event", None) == "start":
            current = name
        elif name is not None:
            records[name] = event
            current = None
    return records, current


def _run_workers(
    framework: str, precision: str, names: Sequence[str], batch_size: int, threads: int, folder: Path,
    executor: Executor, on_progress: Callable[[str], None] | None,
) -> dict[str, _Outcome]:
    """Every network of ``names`` on one framework in one precision, in as few workers as it takes.

    One worker computes them all. If it dies (a crash, the time limit, memory), the network it was
    computing gets that status with the worker's output, and the networks after it are given to a
    fresh worker; a worker that died before its first network (the import) takes them all down."""
    outcomes: dict[str, _Outcome] = {}
    pending = []
    info = FRAMEWORKS[framework]
    for name in names:  # what the registry knows the framework cannot build starts no worker
        reason = info.unsupported_reason(get_workload(name).network.layer_types(), "infer")
        if precision != "float64" and precision not in info.precisions:
            reason = f"{framework} does not run {precision} (it runs {', '.join(info.precisions)})"
        if reason is None:
            pending.append(name)
        else:
            outcomes[name] = _Outcome("unsupported", reason)
    attempt = 0
    while pending:
        arrays_folder = folder / f"{framework}-{precision}-{attempt}"
        attempt += 1
        timeout = VERIFY_TIMEOUT_S * len(pending)
        # A verification times nothing, so it may reuse compiled code: the cache is keyed by the graph
        # and the compiler's settings, so what it returns computes what a fresh compilation would.
        cell = Cell(framework=framework, workload=pending[0], scenario="infer", batch_size=batch_size,
                    threads=threads, precision=precision, seed=SEED, measurement=Measurement(compile_cache="shared"))
        execution = executor.execute(
            cell, timeout, ["--verify", str(arrays_folder), "--workloads", ",".join(pending)])
        status, message = classify(execution, timeout)
        data = execution.data or {}
        version = data.get("framework_version")
        if execution.data is not None:
            records, current = data.get("workloads") or {}, None
        else:  # no result: what it finished is in its progress file
            records, current = _read_progress(arrays_folder)
        for name, record in records.items():
            ok = record.get("status") == "ok"
            outcomes[name] = _Outcome(
                str(record.get("status", "failed")), str(record.get("message", "")), record,
                arrays_folder / f"{name}.npz" if ok else None, version,
                "" if ok else execution.output_tail)
        rest = [name for name in pending if name not in records]
        if on_progress:
            on_progress(f"{framework} {precision}: {len(records)} of {len(pending)} networks checked in"
                        f" {execution.wall_s:.1f} s" + (f" ({status}: {message})" if status != "ok" else ""))
        if current is None:  # it ended by itself (its result says why the rest were not run) or died importing
            if status == "ok" and rest:
                status, message = "failed", "the worker ended without reporting this network"
            for name in rest:
                outcomes[name] = _Outcome(status, message, {}, None, version, execution.output_tail)
            break
        outcomes[current] = _Outcome(status, f"{message} (while checking {current}, after the networks before it"
                                     " in the same worker)", {}, None, version, execution.output_tail)
        pending = [name for name in rest if name != current]
    return outcomes


def _compare_outputs(
    check: PairCheck, arrays: Path, oracle: _Oracle, precision: str, tolerances: tuple[float, float],
    problems: list[str], floor: float = 0.0,
) -> tuple[float, float, bool]:
    """Logits and loss against the oracle: their errors, and whether the worker computed gradients."""
    network, recipe = oracle.workload.network, oracle.workload.recipe
    forward_tolerance, loss_tolerance = tolerances
    with np.load(arrays) as stored:
        logits = stored["logits"]
        forward_error = max_relative_error(logits, oracle.logits)
        if logits.shape != oracle.logits.shape:
            problems.append(f"logits of shape {logits.shape}, expected {oracle.logits.shape}")
            forward_error = np.inf
        elif logits.dtype != precision_of(precision).host_dtype:
            problems.append(f"the {precision} check returned {logits.dtype} logits")
        elif not forward_error <= forward_tolerance:  # NaN included
            problems.append(f"{precision} logits differ from the oracle by {forward_error:.2e}")
        elif forward_error < floor:
            problems.append(f"{precision} logits are within {forward_error:.1e} of the oracle, closer than {precision}"
                            f" rounding allows ({floor:.1e}): they were computed in a higher precision")
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
        problems.append(f"{precision} loss differs from the oracle by {loss_error:.2e}")
    return float(forward_error), float(loss_error), has_gradients


def _gradient_error(arrays: Path, reference_arrays: Path, names: list[str]) -> tuple[float, str | None, list[str]]:
    """The worst norm-wise relative error over parameters, its parameter, and the parameters missing."""
    worst_name, worst, missing = None, 0.0, []
    with np.load(arrays) as mine, np.load(reference_arrays) as theirs:
        for name in names:
            key = f"grad/{name}"
            if key not in mine.files:
                missing.append(name)
                continue
            error = max_relative_error(mine[key].astype(np.float64), theirs[key])
            if worst_name is None or (not np.isnan(worst) and not error <= worst):  # a NaN is the worst, and stays
                worst_name, worst = name, error
    return worst, worst_name, missing


def _compare_gradients(check: PairCheck, arrays: Path, reference_arrays: Path, names: list[str]) -> None:
    """float64 gradients against the reference framework's, parameter by parameter."""
    worst, worst_name, missing = _gradient_error(arrays, reference_arrays, names)
    check.problems += [f"no gradient for {name}" for name in missing]
    check.gradient_error, check.worst_parameter = worst, worst_name
    if not worst <= GRADIENT64_TOLERANCE:
        check.problems.append(
            f"float64 gradient of {worst_name} differs from {check.gradient_reference}'s by {worst:.2e}")


@dataclass
class _Pair:
    """One framework's outcomes on one network while it is being judged."""

    check: PairCheck
    arrays32: Path | None = None  # with gradients
    arrays64: Path | None = None
    problems64: list[tuple[str, float | None, float]] = field(default_factory=list)  # message, error, float32 tol


def _judge_network(
    oracle: _Oracle, frameworks: Sequence[str], batch_size: int,
    outcomes32: dict[str, dict[str, _Outcome]], outcomes64: dict[str, dict[str, _Outcome]],
    precision: str = "float32",
) -> list[PairCheck]:
    """Each framework's verdict on one network: ``outcomes32`` are its pass in ``precision``, the one timed
    (float32, or bfloat16 and mixed-bf16, held to TOLERANCES), ``outcomes64`` its float64 pass."""
    name = oracle.workload.name
    limits = TOLERANCES[precision]
    pairs: list[_Pair] = []
    for framework in frameworks:
        pair = _Pair(PairCheck(framework, name, batch_size, status="unavailable",
                               kink_margin=oracle.margin.margin, precision=precision))
        pairs.append(pair)
        check = pair.check
        first = outcomes32.get(framework, {}).get(name)
        if first is None:  # not installed
            info = FRAMEWORKS[framework]
            check.message = info.unavailable_message()
            continue
        check.status, check.message, check.stderr_tail = first.status, first.message, first.stderr_tail
        check.framework_version = first.framework_version
        check.params = first.record.get("params")
        if first.arrays is None:
            continue
        if check.params != oracle.workload.network.params:
            check.problems.append(f"{check.params} parameters, the spec has {oracle.workload.network.params}")
        differs = first.record.get("roundtrip_differs") or []
        if differs:
            check.problems.append(f"{precision} weights do not round-trip: {', '.join(differs[:3])}")
        computed_in = first.record.get("matmul_dtype")  # what the framework says its products ran in
        compute = precision_of(precision).compute
        if computed_in and compute not in computed_in:
            check.problems.append(f"its {precision} matrix products ran in {computed_in}, not {compute}")
        check.forward_error, check.loss_error, has_gradients = _compare_outputs(
            check, first.arrays, oracle, precision, (limits.forward, limits.loss), check.problems,
            limits.forward_floor)
        if not has_gradients:
            check.gradient_reference = "n/a: " + str(first.record.get("gradients_message", "no gradients"))
            check.float32_gradients = check.gradient_reference
            continue
        pair.arrays32 = first.arrays
        second = outcomes64.get(framework, {}).get(name)
        if second is None:
            continue
        if second.status == "unsupported":
            check.gradient_reference = f"n/a: {second.message}"
            continue
        if second.arrays is None:
            pair.problems64.append((f"the float64 check ended {second.status}: {second.message}", None, 0.0))
            check.stderr_tail = check.stderr_tail or second.stderr_tail
            continue
        differs = second.record.get("roundtrip_differs") or []
        if differs:
            pair.problems64.append((f"float64 weights do not round-trip: {', '.join(differs[:3])}", None, 0.0))
        found: list[str] = []
        check.forward64_error, check.loss64_error, _ = _compare_outputs(
            check, second.arrays, oracle, "float64", (FORWARD64_TOLERANCE, LOSS64_TOLERANCE), found)
        for message in found:  # each weighed against the timed precision's tolerance of the same quantity
            is_loss = "loss" in message
            error = check.loss64_error if is_loss else check.forward64_error
            pair.problems64.append((message, error, limits.loss if is_loss else limits.forward))
        pair.arrays64 = second.arrays

    # The reference for gradients: the first framework (in the order given) whose own outputs agree
    # with the oracle in both precisions; the oracle computes no gradients.
    trusted = [pair for pair in pairs if pair.arrays64 is not None and not pair.check.problems and not pair.problems64]
    reference_pair = trusted[0] if trusted else None
    with_gradients = [pair for pair in pairs if pair.arrays64 is not None]
    for pair in pairs:
        check = pair.check
        if reference_pair is None or reference_pair.arrays64 is None:
            if pair.arrays32 is not None:
                check.float32_gradients = "n/a: no framework's float64 outputs agree with the oracle"
            _decide(pair, oracle)
            continue
        if pair.arrays64 is not None:
            if pair is reference_pair:
                check.gradient_reference = "itself (the reference)" if len(with_gradients) > 1 else (
                    "n/a: no other framework to compare with")
            else:
                check.gradient_reference = reference_pair.check.framework
                compared = PairCheck(check.framework, check.workload, batch_size, "ok",
                                     gradient_reference=check.gradient_reference)
                _compare_gradients(compared, pair.arrays64, reference_pair.arrays64, oracle.names)
                check.gradient_error, check.worst_parameter = compared.gradient_error, compared.worst_parameter
                pair.problems64 += [(message, compared.gradient_error if "differs" in message else None,
                                     limits.gradient) for message in compared.problems]
        if pair.arrays32 is not None:
            worst, worst_name, missing = _gradient_error(pair.arrays32, reference_pair.arrays64, oracle.names)
            check.gradient32_error = worst
            source = reference_pair.check.framework
            if missing:
                check.problems += [f"no {precision} gradient for {name}" for name in missing]
            elif worst <= limits.gradient:
                check.float32_gradients = "verified"
            elif oracle.margin.margin >= limits.kink_margin or np.isnan(worst):  # no kink explains a NaN
                check.problems.append(
                    f"{precision} gradient of {worst_name} differs from {source}'s float64 by {worst:.2e}, where it"
                    f" is defined (every ReLU and max-pool kink at least {oracle.margin.margin:.1e} of its layer's"
                    " largest away)")
            elif pair.arrays64 is None:  # nothing decides: say so rather than pass it
                check.float32_gradients = (
                    f"unverified: {oracle.margin.where} has an input {oracle.margin.margin:.1e} of its layer's largest"
                    f" from its kink ({precision} gradient off by {worst:.1e}), and {check.framework} computes no"
                    f" float64 gradients to decide ({check.gradient_reference or 'no float64 check'})")
                check.message = check.message or f"gradients {check.float32_gradients}"
            else:
                check.float32_gradients = (
                    f"not defined to {precision} rounding: {oracle.margin.where} has an input"
                    f" {oracle.margin.margin:.1e} of its layer's largest from its kink ({precision} gradient off by"
                    f" {worst:.1e}); float64 decides")
        _decide(pair, oracle)
    return [pair.check for pair in pairs]


def _decide(pair: _Pair, oracle: _Oracle) -> None:
    """The pair's status: float32 problems strike its timings; float64 ones as the module says."""
    check = pair.check
    float32_verified = not check.problems and (pair.arrays32 is None or check.float32_gradients == "verified")
    for message, error, float32_tolerance in pair.problems64:
        if float32_verified and error is None and "ended" in message:
            check.framework_bugs.append({"precision": "float64", "kind": "failed", "detail": message})
        elif float32_verified and error is not None and error > float32_tolerance:
            check.framework_bugs.append({"precision": "float64", "kind": "wrong numbers", "detail": message})
        else:
            check.problems.append(message)
    if check.status == "ok" and check.problems:
        check.status, check.message = "mismatch", "; ".join(check.problems)
    elif check.status == "ok" and check.framework_bugs:
        check.message = f"{check.precision} verified; a float64 defect of the framework: " + "; ".join(
            bug["detail"] for bug in check.framework_bugs)


def verify(
    frameworks: Sequence[str], workloads: Sequence[str], batch_size: int, threads: int,
    executor: Executor | None = None, on_check: Callable[[PairCheck], None] | None = None,
    on_progress: Callable[[str], None] | None = None, networks_per_worker: int | None = None, jobs: int = 1,
    precision: str = "float32",
) -> list[PairCheck]:
    """Check every framework on every workload, in ``precision`` (one of TOLERANCES) and float64.

    ``networks_per_worker`` None: all in one worker per framework and precision. ``jobs``: how many
    of those workers run at once (with the local executor): a verification times nothing, so workers
    side by side change no number, and on a machine of several cores they finish sooner (each keeps
    ``threads``; the machine's measuring lock keeps measurements away meanwhile).
    """
    stop = threading.Event()
    if executor is None:
        executor = LocalExecutor(stop=stop)
    else:
        jobs = 1  # only the local executor built here learns of a Ctrl-C in the main thread
    names = list(workloads)
    size = networks_per_worker or max(1, len(names))
    installed = [framework for framework in frameworks if FRAMEWORKS[framework].is_installed()]
    # The float64 pass is for gradients: frameworks that train. It runs beside the float32 pass, on
    # every network; its results count only where the float32 pass computed gradients.
    tasks = [(framework, kind) for framework in installed for kind in (precision, "float64")
             if kind == precision or "train" in FRAMEWORKS[framework].scenarios]
    checks: list[PairCheck] = []
    for start in range(0, len(names), size):
        chunk = names[start:start + size]
        with tempfile.TemporaryDirectory(prefix="dlarena-verify-") as folder:
            def run(task: tuple[str, str], chunk: list[str] = chunk, folder: str = folder) -> dict[str, _Outcome]:
                return _run_workers(task[0], task[1], chunk, batch_size, threads, Path(folder), executor, on_progress)

            done = _run_tasks(tasks, run, jobs, stop)
            outcomes32 = {framework: done[(framework, precision)] for framework in installed}
            outcomes64 = {framework: done[(framework, "float64")] for framework in installed
                          if (framework, "float64") in done}
            for name in chunk:
                for check in _judge_network(_oracle(name, batch_size), frameworks, batch_size, outcomes32, outcomes64,
                                            precision):
                    checks.append(check)
                    if on_check:
                        on_check(check)
    return checks


Task = tuple[str, str]  # framework, precision


def _run_tasks(
    tasks: Sequence[Task], run: Callable[[Task], dict[str, _Outcome]], jobs: int, stop: threading.Event,
) -> dict[Task, dict[str, _Outcome]]:
    """Every task's outcomes, ``jobs`` at a time; Ctrl-C stops the workers of every thread."""
    if jobs <= 1:
        return {task: run(task) for task in tasks}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {task: pool.submit(run, task) for task in tasks}
        try:
            return {task: future.result() for task, future in futures.items()}
        except BaseException:
            stop.set()  # the running workers are killed within the executor's poll interval
            for future in futures.values():
                future.cancel()
            raise


def framework_bugs(checks: Sequence[PairCheck]) -> list[str]:
    """One line per framework, version and precision with a defect found in a precision not timed:
    the networks that show it, the smallest first (the one to reproduce it with)."""
    found: dict[tuple[str, str, str, str], list[PairCheck]] = {}
    for check in checks:
        for bug in check.framework_bugs:
            key = (check.framework, check.framework_version or "?", bug["precision"], bug["kind"])
            found.setdefault(key, []).append(check)
    lines = []
    for (framework, version, precision, kind), shown in found.items():
        shown.sort(key=lambda check: get_workload(check.workload).params)
        smallest = shown[0]
        detail = next(bug["detail"] for bug in smallest.framework_bugs
                      if bug["precision"] == precision and bug["kind"] == kind)
        lines.append(
            f"{framework} {version}, {precision}: {kind} on {', '.join(c.workload for c in shown)}; smallest"
            f" {smallest.workload} ({get_workload(smallest.workload).params:,} parameters): {detail}."
            " The float32 computation, which is timed, is verified on each, so their timings count.")
    return lines
