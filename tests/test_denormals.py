"""Subnormal numbers: every result says whether its framework flushed them, measured in its process.

TensorFlow and JAX flush subnormals to zero and PyTorch keeps them, and arithmetic on them can be
many times slower on a CPU (a torch fcn5 training loop: 769 ms a step keeping them, 611 ms flushing), so a
comparison that does not say so compares floating-point modes without knowing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.measure.aggregate import denormal_figures
from dlarena.orchestrate.orchestrator import run_suite
from dlarena.plan.cell import Cell, Measurement
from dlarena.plan.suite import parse_suite
from dlarena.report.export import tidy
from dlarena.report.markdown import denormals_note, render
from dlarena.store.database import Store
from dlarena_runner.denormals import PROBE_COLUMNS, PROBE_ROWS, classify, probe_inputs

# Its module-scoped runs are built once: under pytest-xdist its tests stay in one test process.
pytestmark = pytest.mark.xdist_group("denormal-runs")

SUITE = """
name = "denormals"
frameworks = ["fault-none"]
threads = [1]
repetitions = 1
target_ci = 0
[measurement]
warmup_steps = 1
min_steps = 3
min_time_s = 0.05
denormals = "{mode}"
[[sweep]]
workloads = ["fcn5-small"]
scenarios = ["infer"]
batch_sizes = [4]
[[sweep]]
workloads = ["digits-mlp"]
scenarios = ["accuracy"]
epochs = 1
"""


def test_the_probes_exact_outputs_are_subnormal_and_its_inputs_normal() -> None:
    a, b = probe_inputs()
    tiny = np.finfo(np.float32).tiny  # the smallest normal float32
    assert a.dtype == b.dtype == np.float32 and a.min() > tiny and b.min() > tiny
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert exact.min() > 0 and exact.max() < tiny


FLUSH_SCRIPT = """
import json
from dlarena_runner.denormals import classify, flush_calling_thread, probe_inputs
a, b = probe_inputs()
before = classify(a @ b)["measured"]
switch = flush_calling_thread()
print(json.dumps([before, classify(a @ b)["measured"], switch]))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the MXCSR switch is x86-64's")
def test_the_shared_switch_makes_numpys_own_threads_flush() -> None:
    """The switch kernel-based frameworks get by default: NumPy keeps subnormals, and flushes after it
    (one thread: OpenBLAS computes in the calling thread, whose MXCSR the switch set)."""
    completed = subprocess.run([sys.executable, "-c", FLUSH_SCRIPT], capture_output=True, text=True, check=True,
                               env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    before, after, switch = json.loads(completed.stdout)
    assert (before, after) == ("keep", "flush") and "MXCSR" in switch


def test_all_zero_is_flush_none_is_keep_and_some_is_mixed() -> None:
    kept = np.full((PROBE_ROWS, PROBE_COLUMNS), 2.56e-39, dtype=np.float32)
    assert classify(kept) == {"measured": "keep", "flushed_outputs": 0, "outputs": kept.size}
    assert classify(np.zeros_like(kept))["measured"] == "flush"
    half = kept.copy()
    half[: PROBE_ROWS // 2] = 0  # the rows one thread of two computed, flushed by that thread
    assert classify(half) == {"measured": "mixed", "flushed_outputs": kept.size // 2, "outputs": kept.size}
    with pytest.raises(ValueError, match="shape"):
        classify(kept[:3])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, str]:
    """A run of the fault framework's timing and accuracy cells in the default mode, in real workers."""
    store = Store.open(tmp_path_factory.mktemp("default") / "results.db")
    return store, run_suite(parse_suite(SUITE.format(mode="default"), "test"), store, ["test"]).run_id


def test_every_result_records_the_mode_its_framework_measured(default_run: tuple[Store, str]) -> None:
    """NumPy (the fault framework) keeps subnormals, in timing and accuracy cells alike."""
    store, run_id = default_run
    rows = store.cell_rows(run_id)
    assert {row["workload"]: row["status"] for row in rows} == {"fcn5-small": "ok", "digits-mlp": "ok"}
    for row in rows:
        data = _result_data(store, row["cell_id"])
        assert data["parity"]["denormals"] == "keep"
        assert data["denormals"]["setting"] == "default" and data["denormals"]["switch"] is None
        assert data["denormals"]["flushed_outputs"] == 0
    for exported in tidy(rows):
        assert (exported["denormals_setting"], exported["denormals"]) == ("default", "keep")
    assert "Mixed subnormal modes" not in render(dict(store.run(run_id)), {}, rows)


def test_flush_is_unsupported_where_the_framework_cannot_flush(db_path: Path) -> None:
    store = Store.open(db_path)
    run_id = run_suite(parse_suite(SUITE.format(mode="flush"), "test"), store, ["test"]).run_id
    for row in store.cell_rows(run_id):
        assert row["status"] == "unsupported"
        assert row["message"] == ("fault-none cannot flush subnormal numbers to zero on cpu: it has no switch to do"
                                  f" so, its own product still kept {PROBE_ROWS * PROBE_COLUMNS} of"
                                  f" {PROBE_ROWS * PROBE_COLUMNS} subnormal outputs")


def test_a_cells_summary_joins_the_modes_its_processes_measured() -> None:
    def process(setting: str, measured: str) -> dict[str, Any]:
        return {"denormals": {"setting": setting, "switch": None, "measured": measured}}

    assert denormal_figures([process("default", "keep"), process("default", "keep")]) == {
        "denormals_setting": "default", "denormals": "keep"}
    assert denormal_figures([process("default", "keep"), process("default", "flush")])["denormals"] == "flush,keep"
    assert denormal_figures([{}]) == {}  # results stored before the mode was measured


def _result_data(store: Store, cell_id: int) -> dict[str, Any]:
    (text,) = store.connection.execute("SELECT data FROM results WHERE cell_id = ?", (cell_id,)).fetchone()
    data: dict[str, Any] = json.loads(text)
    return data


def _row(framework: str, mode: str | None) -> dict[str, Any]:
    figures = {"denormals": mode} if mode else {}
    return {"framework": framework, "status": "ok", "summary_data": json.dumps(figures)}


def test_a_table_whose_frameworks_ran_in_different_modes_is_flagged() -> None:
    assert denormals_note([_row("torch", "flush"), _row("tensorflow", "flush")]) == []
    assert denormals_note([_row("torch", "keep"), _row("onnxruntime", "keep"), _row("old", None)]) == []
    note = "\n".join(denormals_note([_row("torch", "keep"), _row("jax", "flush"), _row("tensorflow", "flush")]))
    assert "flushed to zero by jax, tensorflow; kept by torch" in note
    assert "`--denormals flush`" in note
    # One framework whose threads disagreed, or whose processes did, is flagged even when alone.
    assert "flushed in some threads only by torch" in "\n".join(denormals_note([_row("torch", "mixed")]))
    assert "differently in different processes by torch" in "\n".join(denormals_note([_row("torch", "flush,keep")]))
    # A cell without a time is not part of the comparison.
    assert denormals_note([_row("torch", "keep"), {**_row("jax", "flush"), "status": "failed"}]) == []


def test_the_report_flags_the_table_that_mixes_modes(default_run: tuple[Store, str]) -> None:
    store, run_id = default_run
    rows = store.cell_rows(run_id)
    timed = next(row for row in rows if row["workload"] == "fcn5-small")
    # A second framework's figures in the same table, measured flushing (as TensorFlow's would be).
    flushing = {**timed, "framework": "tensorflow",
                "summary_data": json.dumps({**json.loads(timed["summary_data"]), "denormals": "flush"})}
    report = render(dict(store.run(run_id)), {}, [*rows, flushing])
    table = report[report.index("### fcn5-small"):]
    table = table[: table.index("\n### ") if "\n### " in table else table.index("\n## ")]
    assert "Mixed subnormal modes: subnormal numbers were flushed to zero by tensorflow; kept by fault-none" in table


def _torch_worker(mode: str, threads: int) -> dict[str, Any]:
    measurement = Measurement(warmup_steps=1, min_steps=3, min_time_s=0.05, denormals=mode)
    cell = Cell("torch", "fcn5-small", "train", batch_size=8, threads=threads, measurement=measurement)
    finished = subprocess.run([sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json()],
                              capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(finished.stdout)
    assert result["status"] == "ok", result.get("message")
    return result


@pytest.mark.slow
@pytest.mark.skipif(not FRAMEWORKS["torch"].is_installed(), reason="torch is not installed")
def test_torch_keeps_subnormals_by_default_and_flushes_them_when_asked() -> None:
    """At two threads where the machine has them: torch.set_flush_denormal must reach the intra-op
    threads too, or the probe's product, split over them, comes back mixed."""
    threads = min(2, len(os.sched_getaffinity(0)))
    kept = _torch_worker("default", threads)
    assert kept["parity"]["denormals"] == "keep" and kept["parity"]["threads"] == threads
    flushed = _torch_worker("flush", threads)
    assert flushed["parity"]["denormals"] == "flush"
    assert flushed["denormals"]["switch"] == "torch.set_flush_denormal(True)"
    assert flushed["denormals"]["flushed_outputs"] == flushed["denormals"]["outputs"]
