"""`dlarena verify` end to end with the test-only fault frameworks: verdicts, storage, invalid timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import Cli
from dlarena.orchestrate.verify import (
    FORWARD_TOLERANCE,
    GRADIENT64_TOLERANCE,
    PairCheck,
    _compare_gradients,
    verify,
    workload_names,
)
from dlarena.spec import reference
from dlarena.spec.catalogue import CATALOGUE
from dlarena.spec.weights import canonical_batch, canonical_weights, parameter_specs


def test_canonical_weights_cover_every_parameter_exactly_once() -> None:
    for workload in CATALOGUE.values():
        specs = parameter_specs(workload.network)
        assert sum(int(__import__("math").prod(spec.shape)) for spec in specs) == workload.params, workload.name
        assert len({spec.name for spec in specs}) == len(specs)


def test_canonical_weights_and_batches_are_deterministic() -> None:
    network = CATALOGUE["karmanov-gru-small"].network
    first, second = canonical_weights(network, 3), canonical_weights(network, 3)
    assert all((first[name] == second[name]).all() for name in first)
    inputs, labels = canonical_batch(network, 4, 3)
    assert inputs.dtype.kind == "i" and inputs.max() < network.vocab and labels.max() < network.classes
    logits = reference.forward(network, first, inputs)
    assert logits.shape == (4, network.classes) and logits.dtype.name == "float64"


def test_small_names_map_to_published_and_back() -> None:
    assert workload_names(["fcn5", "lstm32-small"], full=False) == ["fcn5-small", "lstm32-small"]
    assert workload_names(["fcn5-small", "lstm32"], full=True) == ["fcn5", "lstm32"]


def test_wrong_numbers_are_a_mismatch_and_faults_keep_their_status() -> None:
    checks = {c.framework: c for c in verify(
        ["fault-none", "fault-wrong", "fault-raise", "fault-unsupported"], ["mnist-cnn-small"], 2, threads=1)}
    ok, wrong = checks["fault-none"], checks["fault-wrong"]
    assert ok.status == "ok" and ok.forward_error is not None and ok.forward_error < FORWARD_TOLERANCE
    assert ok.gradient_reference is not None and ok.gradient_reference.startswith("n/a")
    assert wrong.status == "mismatch" and "logits differ from the oracle" in wrong.message
    assert wrong.forward_error is not None and 0.005 < wrong.forward_error < 0.02
    assert checks["fault-raise"].status == "failed" and "injected failure" in checks["fault-raise"].message
    assert checks["fault-unsupported"].status == "unsupported"


def test_cli_verify_exits_non_zero_and_marks_timings_invalid(cli: Cli, tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    run = cli("run", "--frameworks", "fault-none,fault-wrong", "--workloads", "mnist-cnn-small",
              "--scenarios", "infer", "--threads", "1", "--batch-sizes", "2", "--db", db)
    assert run.returncode == 0, run.stderr
    good = cli("verify", "--frameworks", "fault-none", "--workloads", "mnist-cnn", "--db", db)
    assert good.returncode == 0, good.stderr
    assert "| mnist-cnn-small | fault-none | ok |" in good.stdout
    bad = cli("verify", "--frameworks", "fault-none,fault-wrong", "--workloads", "mnist-cnn", "--db", db)
    assert bad.returncode == 1
    assert "| mnist-cnn-small | fault-wrong | mismatch |" in bad.stdout
    assert "Traceback" not in bad.stderr
    report = cli("report", "--db", db).stdout
    assert "*invalid: mismatch*" in report and "| fault-none | " in report
    rows = {row["framework"]: row for row in json.loads(cli("export", "--format", "json", "--db", db).stdout)}
    assert rows["fault-wrong"]["verification"] == "mismatch"
    assert rows["fault-none"]["verification"] == "verified"


def test_gradients_are_compared_parameter_by_parameter(tmp_path: Path) -> None:
    """One parameter off by ten times the tolerance is named; float64 rounding noise is not."""
    rng = np.random.default_rng(0)
    reference_grads = {"grad/0.kernel": rng.normal(size=(8, 4)), "grad/0.bias": rng.normal(size=4)}
    np.savez(tmp_path / "reference.npz", **reference_grads)
    noisy = {key: value * (1 + 4 * np.finfo(np.float64).eps) for key, value in reference_grads.items()}
    np.savez(tmp_path / "noisy.npz", **noisy)
    wrong = dict(noisy, **{"grad/0.bias": reference_grads["grad/0.bias"] * (1 + 10 * GRADIENT64_TOLERANCE)})
    np.savez(tmp_path / "wrong.npz", **wrong)
    np.savez(tmp_path / "missing.npz", **{"grad/0.kernel": reference_grads["grad/0.kernel"]})
    names = ["0.kernel", "0.bias"]

    def check(arrays: str) -> PairCheck:
        result = PairCheck("a", "w", 2, "ok", gradient_reference="b")
        _compare_gradients(result, tmp_path / arrays, tmp_path / "reference.npz", names)
        return result

    assert check("noisy.npz").problems == []
    flagged = check("wrong.npz")
    assert flagged.worst_parameter == "0.bias" and len(flagged.problems) == 1
    assert flagged.gradient_error is not None and flagged.gradient_error > 5 * GRADIENT64_TOLERANCE
    assert check("missing.npz").problems == ["no gradient for 0.bias"]
