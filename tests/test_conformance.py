"""One conformance suite for every registered framework: registering a framework is enough to cover it.

Each framework builds networks in real worker processes and must: report the spec's parameter count,
take train and infer steps (or declare a scenario unsupported), keep to one core when given one
thread, round-trip canonical weights, and agree with the NumPy oracle and with the other frameworks
(`dlarena verify` on every small twin of the catalogue).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.orchestrate.executor import LocalExecutor
from dlarena.orchestrate.orchestrator import execute_cell
from dlarena.orchestrate.verify import VERIFY_BATCH_SIZE, PairCheck, verify, workload_names
from dlarena.plan.cell import Cell, Measurement
from dlarena.plan.suite import available_cores, load_suite
from dlarena.report.annotate import CORES_USED_TOLERANCE
from dlarena.spec.catalogue import CATALOGUE, get_workload
from dlarena.spec.layers import Activation, Conv2D
from dlarena.store.database import StoredResult
from dlarena_runner.denormals import MEASURED_MODES

REAL = [name for name in FRAMEWORKS if not name.startswith("fault-")]
INSTALLED = [name for name in REAL if FRAMEWORKS[name].is_installed()]
# These check what a step computes and which cores it uses, not what compiling costs: compiled code
# may come from the machine's cache (tests/test_compile_cache.py checks the cold mode).
# Long enough that CPU accounting (10 ms ticks) and start-up threads average out in cores_used.
THREAD_CHECK = Measurement(warmup_steps=2, min_steps=5, min_time_s=0.5, compile_cache="shared")
STEPS = Measurement(warmup_steps=1, min_steps=3, min_time_s=0.05, compile_cache="shared")
CELL_TIMEOUT_S = 300.0
QUICK_WORKLOADS = sorted({w for sweep in load_suite("quick").sweeps for w in sweep.workloads})
# Every network of the catalogue at its small size, as `dlarena verify --workloads all` checks it: one
# worker per framework and precision computes them all, so the imports are paid once per framework.
VERIFIED_WORKLOADS = workload_names([name for name, w in CATALOGUE.items() if not w.is_small], full=False)
# Frameworks of managed environments (Lasagne, Keras 2, MXNet, Gluon, Chainer, Paddle) are verified
# here on the networks the quick suite times plus a GRU and a dropout CNN: every layer type of that
# suite. `dlarena verify --workloads all --frameworks torch,...` checks them on every small twin (its
# table is in the README).
MANAGED_VERIFIED_WORKLOADS = [*QUICK_WORKLOADS, "karmanov-gru-small", "mnist-cnn-small"]
# Frameworks that compile through Theano build a C module per op with g++, 3-6 s each, and optimise
# each graph for seconds to minutes, measured on this project's 2-core machine with an empty compile
# directory (as CI has): fcn5-small's first training step 58-84 s, karmanov-cnn-small's 264 s,
# lstm32-small's 630 s (its scan loops), every one again in float64. CI checks them on dense and
# convolutional networks (every op but scan); the recurrent ones are verified by hand (README).
# Their verify pass has one CNN (mnist-cnn-small: convolution, pooling, dropout, dense), since each
# network is compiled again for float64 and for each of the three frameworks; karmanov-cnn-small, the
# quick suite's CNN, is stepped and thread-checked below (THEANO_STEP_WORKLOADS).
THEANO_COMPILED = {name for name, info in FRAMEWORKS.items() if "theano" in info.imports}
THEANO_VERIFIED_WORKLOADS = ["fcn5-small", "mnist-cnn-small"]
THEANO_STEP_WORKLOADS = ["fcn5-small", "karmanov-cnn-small", "mnist-cnn-small"]
# torch.compile builds every graph cold in CI (Inductor generates and compiles C++ for each network's
# forward and backward, in each precision): on this 2-core machine it was the largest part of this
# fixture, over 10 minutes for the 16 small twins against 30 s for eager torch. CI checks it on the
# same networks as the managed frameworks (every layer type the quick suite times, and
# mnist-cnn-small, where its float64 conv-gradient bug shows); `dlarena verify --workloads all`
# checks every twin.
# tinygrad and PyTensor compile every network from nothing too: tinygrad renders and compiles each kernel
# with clang (its float64 verify pass of the 5 quick networks took 929 s here, on a busy machine), and
# PyTensor's Numba linker compiles each function (lstm32-small's gradients: 474 s, busy machine).
SLOW_COMPILING = {"torch-compile", "tinygrad", "pytensor"}
MANAGED = [name for name in INSTALLED if FRAMEWORKS[name].environment is not None]
# Under pytest-xdist (`make test`), the tests of one module-scoped fixture run in one test process, so
# that the fixture is built once; the other tests spread over both processes.
VERIFY_GROUP = pytest.mark.xdist_group("conformance-verify")


def verified_workloads(framework: str) -> list[str]:
    if framework in THEANO_COMPILED:
        return THEANO_VERIFIED_WORKLOADS
    if framework in SLOW_COMPILING or FRAMEWORKS[framework].environment is not None:
        return MANAGED_VERIFIED_WORKLOADS
    return VERIFIED_WORKLOADS


# `make test` (CI) verifies the frameworks of dlarena's own environment on these: the quick suite's
# networks and the fewest others that hold every layer type and activation of the catalogue (a GRU;
# mnist-cnn-small, where torch-compile's float64 bug shows; ResNet's batch norm and residuals;
# GoogLeNet's branches and average pooling; the transformers). The other small twins (the larger
# AlexNet, OverFeat and VGG convnets, FCN-8, LSTM-64, the CIFAR-10 CNN: the same layer types again)
# are marked exhaustive, for `make test-all`: verifying them took the fixture from about 12 to 20
# minutes of CI's 2 cores (2026-12-02).
CI_VERIFIED_WORKLOADS = [*QUICK_WORKLOADS, "karmanov-gru-small", "mnist-cnn-small", "resnet50-small",
                         "googlenet-small", "bert-base-small", "gpt2-124m-small"]


def _verified_pair(framework: str, workload: str) -> object:
    exhaustive = verified_workloads(framework) == VERIFIED_WORKLOADS and workload not in CI_VERIFIED_WORKLOADS
    return pytest.param(framework, workload, marks=[pytest.mark.exhaustive] if exhaustive else [])


VERIFIED_PAIRS = [_verified_pair(framework, workload)
                  for framework in REAL for workload in verified_workloads(framework)]
# Step cases a framework's module refuses at run time for its recipe (not its layers, which the
# registry declares): each with the words its sentence must contain. A new refusal fails the test.
REFUSED_STEPS = {
    # Keras 2.3.1's clipnorm on CNTK leaves the weights unchanged once it clips (keras2_cntk.py).
    ("keras2-cntk", "lstm32-small", "train"): "clipnorm",
}
STEP_CASES = [("karmanov-cnn-small", "train"), ("karmanov-cnn-small", "infer"), ("lstm32-small", "train"),
              ("karmanov-gru-small", "infer")]
STEP_PAIRS = [(framework, workload, scenario) for framework in REAL for workload, scenario in STEP_CASES
              if framework not in THEANO_COMPILED or workload in THEANO_STEP_WORKLOADS]
# The thread check times karmanov-cnn-small at batch 32 (enough work per step for a stray thread to
# show in cores_used); the flush check runs its inference. Both are also step cases: the step test
# reads their results rather than starting a worker of its own.
THREAD_WORKLOAD = "karmanov-cnn-small"
FLUSH_CASE = ("karmanov-cnn-small", "infer")
# For a framework that cannot express that CNN (PyTensor has no convolution): the same checks on an MLP.
FALLBACK_WORKLOAD = "fcn5-small"


def _checked_workload(framework: str, workload: str, scenario: str) -> str:
    """``workload``, or FALLBACK_WORKLOAD where the registry says the framework cannot express it."""
    reason = FRAMEWORKS[framework].unsupported_reason(get_workload(workload).network.layer_types(), scenario)
    return workload if reason is None or "scenario" in reason else FALLBACK_WORKLOAD


def _per_framework(cases: list[tuple[str, ...]]) -> list[object]:
    """Each framework's cases in one test process under pytest-xdist, where ``_execute`` keeps every
    cell's result: the step, flush and thread checks of a framework share their worker runs (its import,
    and Theano's or Inductor's compilation, paid once per cell, not once per check)."""
    return [pytest.param(*case, marks=pytest.mark.xdist_group(f"framework-{case[0]}")) for case in cases]


def _thread_cell(framework: str) -> Cell:
    scenario = "train" if "train" in FRAMEWORKS[framework].scenarios else "infer"
    workload = _checked_workload(framework, THREAD_WORKLOAD, scenario)
    return Cell(framework, workload, scenario, batch_size=32, threads=1, measurement=THREAD_CHECK)


def _flush_cell(framework: str) -> Cell:
    workload, scenario = FLUSH_CASE
    return Cell(framework, _checked_workload(framework, workload, scenario), scenario, batch_size=8, threads=1,
                measurement=replace(STEPS, denormals="flush"))


def _step_cell(framework: str, workload: str, scenario: str) -> Cell:
    """The cell a step case runs: the thread check's or the flush check's where it is the same case."""
    thread = _thread_cell(framework)
    if (workload, scenario) == (thread.workload, thread.scenario):
        return thread
    if (workload, scenario) == FLUSH_CASE:
        return _flush_cell(framework)
    return Cell(framework, workload, scenario, batch_size=8, threads=1, measurement=STEPS)


_RESULTS: dict[Cell, StoredResult] = {}


def _execute(cell: Cell) -> StoredResult:
    """The cell run in a real worker, once per test process (its result kept for the other checks)."""
    if cell not in _RESULTS:
        _RESULTS[cell] = execute_cell(cell, CELL_TIMEOUT_S, LocalExecutor())
    return _RESULTS[cell]


def _needs(framework: str) -> None:
    if framework not in INSTALLED:
        pytest.skip(f"{framework} is not installed")


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "workload", "scenario"), _per_framework(STEP_PAIRS))
def test_steps_and_parameter_count(framework: str, workload: str, scenario: str) -> None:
    _needs(framework)
    cell = _step_cell(framework, workload, scenario)
    result = _execute(cell)
    if scenario not in FRAMEWORKS[framework].scenarios:
        assert result.status == "unsupported" and scenario in result.message
        return
    # A layer type the registry says it cannot express (Lasagne's GRU): unsupported, with that reason.
    reason = FRAMEWORKS[framework].unsupported_reason(get_workload(workload).network.layer_types(), scenario)
    if reason is not None:
        assert result.status == "unsupported" and result.message == reason, result.message
        return
    if (framework, workload, scenario) in REFUSED_STEPS:
        assert result.status == "unsupported" and REFUSED_STEPS[framework, workload, scenario] in result.message
        return
    assert result.status == "ok", f"{result.message}\n{result.stderr_tail}"
    data = result.data
    assert data["params"] == get_workload(workload).params
    assert len(data["samples_s"]) >= cell.measurement.min_steps and all(s > 0 for s in data["samples_s"])
    parity = data["parity"]
    assert parity["threads"] == 1 and parity["dtype"] == "float32" and parity["execution"]
    assert parity["denormals"] in MEASURED_MODES  # measured by the framework's own product


@pytest.mark.slow
@pytest.mark.parametrize("framework", _per_framework([(name,) for name in REAL]))
def test_flush_mode_flushes_subnormals(framework: str) -> None:
    """`--denormals flush` holds every registered framework on the CPU to flush-to-zero (each has a switch,
    or flushes already); one that could not would be stored unsupported, with the sentence saying so."""
    _needs(framework)
    result = _execute(_flush_cell(framework))
    assert result.status == "ok", f"{result.message}\n{result.stderr_tail}"
    assert result.data["parity"]["denormals"] == "flush"


@pytest.mark.slow
@pytest.mark.parametrize("framework", _per_framework([(name,) for name in REAL]))
def test_one_thread_keeps_to_one_core(framework: str) -> None:
    _needs(framework)
    result = _execute(_thread_cell(framework))
    assert result.status == "ok", result.message
    assert result.data["cores_used"] <= 1 + CORES_USED_TOLERANCE, result.data["cores_used"]
    assert len(result.data["affinity"]) == 1


def _selected_pairs(request: pytest.FixtureRequest) -> set[tuple[str, str]]:
    """The (framework, workload) pairs whose verdict test this session runs (without the exhaustive
    ones under `make test`); every pair not marked exhaustive where it runs none (another test of the
    group alone)."""
    selected = {(item.callspec.params["framework"], item.callspec.params["workload"])
                for item in request.session.items
                if getattr(item, "originalname", "") == "test_same_network_same_numbers"}
    return selected or {(framework, workload) for framework in REAL for workload in verified_workloads(framework)
                        if workload in CI_VERIFIED_WORKLOADS or verified_workloads(framework) != VERIFIED_WORKLOADS}


@pytest.fixture(scope="module")
def verdicts(request: pytest.FixtureRequest) -> dict[tuple[str, str], PairCheck]:
    """`dlarena verify` on every installed framework, each on the networks of its `verified_workloads`
    that this session's tests ask about, as the command runs it: with every core (torch.compile's
    Inductor compiles its C++ kernels on each), and as many workers side by side; the frameworks
    verified on the same networks in one call."""
    verdicts: dict[tuple[str, str], PairCheck] = {}
    reference = ["torch"] if "torch" in INSTALLED else []
    selected = _selected_pairs(request)
    groups: dict[tuple[str, ...], list[str]] = {}  # the frameworks verified on the same networks, together
    for framework in INSTALLED:
        workloads = tuple(name for name in verified_workloads(framework) if (framework, name) in selected)
        if workloads:
            groups.setdefault(workloads, []).append(framework)
    for workloads, frameworks in groups.items():  # against torch's float64 gradients, as `dlarena verify` does
        members = [*reference, *(name for name in frameworks if name not in reference)]
        for check in verify(members, list(workloads), VERIFY_BATCH_SIZE, threads=available_cores(),
                            jobs=available_cores()):
            verdicts.setdefault((check.framework, check.workload), check)
    return verdicts


def _layer_kinds(workload: str) -> set[str]:
    """What a framework must build for a network: layer types, activations by function, padded or not."""
    kinds = set()
    for layer in get_workload(workload).network.layers:
        kind = type(layer).__name__
        if isinstance(layer, Activation):
            kind += f" {layer.function}"
        if isinstance(layer, Conv2D):
            kind += f" padding {layer.padding}"
        kinds.add(kind)
    return kinds


def test_the_networks_ci_verifies_hold_every_layer_type_and_activation_of_the_catalogue() -> None:
    def kinds(name: str) -> set[str]:
        network = get_workload(name).network
        found, pending = set(network.layer_types()), list(network.layers)
        while pending:  # activations by function, inside residual blocks and branches too
            layer = pending.pop()
            if isinstance(layer, Activation):
                found.add(f"Activation {layer.function}")
            pending += [*getattr(layer, "body", ()), *getattr(layer, "shortcut", ()),
                        *(sub for branch in getattr(layer, "branches", ()) for sub in branch)]
        return found

    everything = set().union(*(kinds(name) for name in CATALOGUE))
    assert set().union(*(kinds(name) for name in CI_VERIFIED_WORKLOADS)) == everything


def test_verified_networks_cover_every_layer_of_the_quick_suite() -> None:
    verified = set().union(*(_layer_kinds(workload) for workload in VERIFIED_WORKLOADS))
    for workload in QUICK_WORKLOADS:
        assert _layer_kinds(workload) <= verified, f"{workload} has layers no verified network has"


@pytest.mark.slow
@VERIFY_GROUP
@pytest.mark.parametrize(("framework", "workload"), VERIFIED_PAIRS)
def test_same_network_same_numbers(verdicts: dict[tuple[str, str], PairCheck], framework: str, workload: str) -> None:
    _needs(framework)
    check = verdicts[(framework, workload)]
    known = _known_bug(framework, check.framework_version, workload)
    if known == "float32":  # what is timed is wrong: a mismatch, its timings struck out
        assert check.status == "mismatch" and "gradient" in check.message, (
            f"{framework} {check.framework_version} now computes {workload}'s float32 gradients right:"
            f" remove it from KNOWN_BUGS ({check.status}: {check.message})")
        return
    if check.status == "unsupported":
        assert check.message, "an unsupported pair says why"
        return
    assert check.status == "ok", f"{check.status}: {check.message}\n{check.stderr_tail}"
    assert check.params == get_workload(workload).params
    assert check.forward_error is not None and check.loss_error is not None
    trains = "train" in FRAMEWORKS[framework].scenarios
    in_float64 = "float64" in FRAMEWORKS[framework].check_precisions
    if trains and in_float64:
        # Every framework that trains is checked in float64, where its gradients are compared.
        assert check.forward64_error is not None and check.loss64_error is not None
        assert not str(check.gradient_reference).startswith("n/a"), check.gradient_reference
    if check.gradient_reference not in (None, "itself (the reference)") and trains and in_float64:
        assert check.gradient_error is not None
    if trains:
        # What is timed, float32, has its gradients checked, or says why the float32 gradient is not
        # defined to its tolerance there (a kink within rounding): float64 decided, or, for a framework
        # that computes no float64, the verdict says its gradients are unverified there.
        expected = ("verified", "not defined") if in_float64 else ("verified", "unverified")
        assert check.float32_gradients.startswith(expected), check.float32_gradients


# Training the same network from the same starting weights on the same batches: every framework's
# per-epoch training loss must follow PyTorch's. Float32 rounding differs between frameworks and
# grows over the steps of training; 1e-3 relative over three epochs of digits-mlp is ten times what
# the frameworks were measured to differ by (under 1e-4 for TensorFlow against PyTorch), and far
# below what a wrong optimizer setting, a missed bias or a misordered batch would change.
TRAINING_LOSS_RTOL = 1e-3
ACCURACY_EPOCHS = 3


# The same training through a second route of a framework that CI trains already (torch's compiled
# twin, TensorFlow under XLA, Keras on its second and third backend): `make test-all` trains them.
TRAINED_IN_TEST_ALL = frozenset({"torch-compile", "tensorflow-xla", "keras-torch", "keras-tensorflow"})


def _selected_training(request: pytest.FixtureRequest) -> set[str]:
    """The frameworks whose training test this session runs; where it runs none, those CI trains."""
    selected = {item.callspec.params["framework"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_same_data_same_training"}
    return selected or {name for name in REAL if name not in TRAINED_IN_TEST_ALL}


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest) -> dict[str, StoredResult]:
    """Three epochs of digits-mlp on every installed framework this session's tests ask about (torch,
    the reference, always), one worker process each."""
    results = {}
    selected = _selected_training(request) | {"torch"}
    for framework in (name for name in INSTALLED if name in selected):
        cell = Cell(framework, "digits-mlp", "accuracy", batch_size=32, threads=1, epochs=ACCURACY_EPOCHS,
                    target_accuracy=None, measurement=STEPS)
        results[framework] = _execute(cell)
    return results


@pytest.mark.slow
@pytest.mark.xdist_group("conformance-training")
@pytest.mark.parametrize("framework", [
    pytest.param(name, marks=[pytest.mark.exhaustive] if name in TRAINED_IN_TEST_ALL else []) for name in REAL])
def test_same_data_same_training(trained: dict[str, StoredResult], framework: str) -> None:
    _needs(framework)
    result = trained[framework]
    if "accuracy" not in FRAMEWORKS[framework].scenarios:
        assert result.status == "unsupported" and "accuracy" in result.message
        return
    assert result.status == "ok", f"{result.message}\n{result.stderr_tail}"
    data = result.data
    assert data["params"] == get_workload("digits-mlp").params
    epochs = data["accuracy"]["epochs"]
    assert [epoch["epoch"] for epoch in epochs] == list(range(1, ACCURACY_EPOCHS + 1))
    assert epochs[-1]["test_accuracy"] > 0.9 and epochs[-1]["loss"] < epochs[0]["loss"]
    reference = trained["torch"]
    if framework != "torch" and reference.status == "ok":
        expected = [epoch["loss"] for epoch in reference.data["accuracy"]["epochs"]]
        assert [epoch["loss"] for epoch in epochs] == pytest.approx(expected, rel=TRAINING_LOSS_RTOL)


# Bugs of the frameworks that verify finds, each reproduced in plain framework code in
# tests/test_framework_bugs.py: (framework, version prefix) -> {network: the precision it is wrong in}.
# torch 2.13's Inductor returns zero convolution gradients after max pooling (DEVELOPERS.md, "Framework
# bugs verify found"). Wrong in float32, what is timed: a mismatch, its timings struck out. Wrong in
# float64 only: the timings count and the verdict carries the bug. A fix fails these tests, saying so.
KNOWN_BUGS = {
    ("torch-compile", "2.13."): {"alexnet-small": "float32", "cifar10-cnn-small": "float32",
                                 "overfeat-small": "float32", "vgg-a-small": "float32", "mnist-cnn-small": "float64"},
}


def _known_bug(framework: str, version: str | None, workload: str) -> str | None:
    for (name, prefix), networks in KNOWN_BUGS.items():
        if framework == name and (version or "").startswith(prefix):
            return networks.get(workload)
    return None


@pytest.mark.slow
@VERIFY_GROUP
def test_framework_bugs_found_are_known(verdicts: dict[tuple[str, str], PairCheck]) -> None:
    found = {(check.framework, check.workload) for check in verdicts.values() if check.framework_bugs}
    expected = {(check.framework, check.workload) for check in verdicts.values()
                if _known_bug(check.framework, check.framework_version, check.workload) == "float64"}
    assert found == expected, "float64 bugs found, against those reproduced in tests/test_framework_bugs.py"
