"""The old-interpreter path: the host writes a job, dlarena_runner.job_worker runs it, the host reads it.

Driven with the test-only ``fault-job`` framework (a NumPy perceptron on ``dlarena_runner.model``),
so that it needs no framework: a timed cell, its stored command run again by hand, a verification
against the oracle, and the same job on Python 3.6 (CNTK's interpreter) where one with NumPy is there.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dlarena_runner
from dlarena.environments.manage import installed_record
from dlarena.frameworks.job import JOB_FILE, job_folder, network_json
from dlarena.orchestrate.executor import LocalExecutor
from dlarena.orchestrate.orchestrator import execute_cell
from dlarena.orchestrate.verify import verify
from dlarena.plan.cell import Cell, Measurement
from dlarena.spec.catalogue import CATALOGUE, get_workload
from dlarena.spec.weights import layer_params, walk
from dlarena_runner.job_worker import JOB_SCHEMA
from dlarena_runner.model import Network, layout_plan

# A worker that imports NumPy and steps a small perceptron for a second: only a hung one reaches this.
CELL_TIMEOUT_S = 300.0
QUICK = Measurement(warmup_steps=1, min_steps=3, min_time_s=0.0, max_steps=5, max_time_s=30.0)


def _cell(scenario: str = "train") -> Cell:
    return Cell(framework="fault-job", workload="fcn5-small", scenario=scenario, batch_size=16, device="cpu",
                threads=1, precision="float32", seed=0, measurement=QUICK)


def test_every_catalogue_network_crosses_with_its_parameters_in_canonical_order() -> None:
    for name, workload in CATALOGUE.items():
        network = workload.network
        expected = [spec.name for path, layer, shape in walk(network.layers, network.input_shape)
                    for spec in layer_params(path, layer, shape)]
        crossed = Network(json.loads(json.dumps(network_json(network))))
        assert [param.name for param in crossed.params()] == expected, name
        assert [tuple(param.shape) for param in crossed.params()] == [
            spec.shape for path, layer, shape in walk(network.layers, network.input_shape)
            for spec in layer_params(path, layer, shape)], name


def test_layout_plan_transposes_dense_kernels_and_reorders_gates() -> None:
    network = Network(network_json(get_workload("lstm32-small").network))
    plan = layout_plan(network, {"dense_kernel": "out_in", "lstm_gates": "iofg"})
    kernel = next(param.name for param in network.params() if param.role == "kernel")
    value = np.arange(6.0).reshape(2, 3)
    assert plan[kernel].to_framework(value).shape == (3, 2)
    recurrent = next(param for param in network.params() if param.role == "input_kernel")
    gates = np.repeat(np.arange(4.0), 2)[None, :]  # blocks i, f, g, o
    moved = plan[recurrent.name].to_framework(gates)
    assert moved.tolist() == [[0, 0, 3, 3, 1, 1, 2, 2]]  # i, o, f, g
    assert plan[recurrent.name].to_canonical(moved).tolist() == gates.tolist()
    with pytest.raises(ValueError, match="unknown conventions"):
        layout_plan(network, {"channels_last": "yes"})


def test_a_job_is_written_once_and_keyed_by_its_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = job_folder(_cell(), "time")
    job = json.loads((first / JOB_FILE).read_text())
    assert job["schema"] == JOB_SCHEMA
    arrays = np.load(first / job["networks"]["fcn5-small"]["arrays"])
    assert arrays["inputs"].shape == (16, *get_workload("fcn5-small").network.input_shape)
    assert arrays["inputs"].dtype == np.float32
    assert job_folder(_cell(), "time") == first
    assert job_folder(_cell(), "verify", ["fcn5-small"]) != first  # canonical weights, not starting ones
    assert not list(first.parent.glob("*.partial"))


def test_a_job_cell_is_timed_stored_and_runs_again_by_hand() -> None:
    stored = execute_cell(_cell(), CELL_TIMEOUT_S, LocalExecutor())
    assert stored.status == "ok", stored.message + stored.stderr_tail
    data = stored.data
    assert len(data["samples_s"]) >= QUICK.min_steps and all(sample > 0 for sample in data["samples_s"])
    assert data["params"] == get_workload("fcn5-small").params
    assert data["parity"]["dtype"] == "float32" and data["parity"]["execution"] == "eager"
    assert data["denormals"]["measured"] in ("flush", "keep", "mixed")
    assert data["affinity"] and len(data["affinity"]) == 1
    assert "dlarena_runner.job_worker" in stored.command
    rerun = subprocess.run(list(stored.command), capture_output=True, text=True, timeout=CELL_TIMEOUT_S, check=True)
    again = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert again["status"] == "ok" and again["schema"] == data["schema"]


def test_a_layer_the_module_lacks_is_unsupported_in_the_worker_with_its_reason() -> None:
    # Past the registry's check (which stores such a cell without a worker): the module says it itself.
    cell = Cell(framework="fault-job", workload="karmanov-cnn-small", scenario="infer", batch_size=8, device="cpu",
                threads=1, precision="float32", seed=0, measurement=QUICK)
    execution = LocalExecutor().execute(cell, CELL_TIMEOUT_S)
    assert execution.data is not None and execution.data["status"] == "unsupported"
    assert "Conv2D" in execution.data["message"] and execution.exit_code == 0


def test_a_job_framework_trains_to_accuracy_on_the_real_data_as_torch_does() -> None:
    # digits-mlp's recipe is Adam, which the perceptron spells as PyTorch does: the same batches in the
    # same order from the same weights give the same per-epoch losses, to float32 rounding.
    cells = {framework: Cell(framework=framework, workload="digits-mlp", scenario="accuracy", batch_size=32,
                             device="cpu", threads=1, precision="float32", seed=0, epochs=2, target_accuracy=None,
                             measurement=QUICK) for framework in ("fault-job", "torch")}
    runs = {framework: execute_cell(cell, CELL_TIMEOUT_S, LocalExecutor()) for framework, cell in cells.items()}
    assert runs["fault-job"].status == "ok", runs["fault-job"].message + runs["fault-job"].stderr_tail
    if runs["torch"].status != "ok":
        pytest.skip(f"torch is not here to compare with: {runs['torch'].message}")
    mine, theirs = (runs[name].data["accuracy"] for name in ("fault-job", "torch"))
    assert mine["dataset"] == "digits" and [epoch["epoch"] for epoch in mine["epochs"]] == [1, 2]
    assert mine["train_samples"] == theirs["train_samples"] and mine["test_samples"] == theirs["test_samples"]
    for ours, reference in zip(mine["epochs"], theirs["epochs"], strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-4)
        assert ours["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=0.01)
    assert len(runs["fault-job"].data["samples_s"]) == 2 * (mine["train_samples"] // 32) - 1


def test_a_job_framework_is_verified_against_the_oracle() -> None:
    checks = verify(["fault-job"], ["fcn5-small"], batch_size=8, threads=1)
    assert [check.status for check in checks] == ["ok"], checks
    assert checks[0].forward_error is not None and checks[0].forward_error < 1e-5
    assert checks[0].forward64_error is not None and checks[0].forward64_error < 1e-12


def _python36_with_numpy() -> str | None:
    record = installed_record("cntk") if "cntk" in _environment_names() else None
    return record["python_executable"] if record else None


def _environment_names() -> list[str]:
    from dlarena.environments import ENVIRONMENTS

    return list(ENVIRONMENTS)


def test_the_job_runs_on_python_36_without_dlarena(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = _python36_with_numpy()
    if python is None:
        pytest.skip("no Python 3.6 with NumPy here: `dlarena env setup cntk` makes one")
    worker_path = tmp_path / "worker-path"
    worker_path.mkdir()
    (worker_path / "dlarena_runner").symlink_to(Path(dlarena_runner.__file__).parent)
    monkeypatch.setenv("PYTHONPATH", str(worker_path))  # the runner alone: dlarena cannot be imported
    probe = subprocess.run([python, "-c", "import importlib.util, sys; print(sys.version_info[:2], "
                            "importlib.util.find_spec('dlarena'))"], capture_output=True, text=True, check=True,
                           env=os.environ)
    assert probe.stdout.strip() == "(3, 6) None"
    stored = execute_cell(_cell(), CELL_TIMEOUT_S, LocalExecutor(python=python))
    assert stored.status == "ok", stored.message + stored.stderr_tail
    assert stored.data["environment"]["python"].startswith("3.6")
