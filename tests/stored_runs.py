"""Runs written through the Store as the orchestrator writes them (one result per worker process, then
the cell's summary from measure/aggregate), with step times chosen so that every answer is known. No
framework is imported: a framework is only a name in the store. Shared by the report's tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dlarena.measure.aggregate import aggregate
from dlarena.plan.cell import Cell
from dlarena.store.database import PlannedCell, Store, StoredResult

ENVIRONMENT = {"cpu_model": "test cpu", "cores": 2, "memory_bytes": 1 << 30, "os": "Linux", "python": "3.11"}
VERSION = "1.0"
# Each process's steps spread symmetrically around its own median, and the process medians around the
# cell's, so that the pooled median is exactly the chosen one (and the report's text is known).
STEP_OFFSETS = [0.002 * k for k in range(-20, 21)]
PROCESS_SHIFTS = (0.0, -0.02, 0.02)


def steps(median: float, shift: float) -> list[float]:
    return [median * (1 + shift) * (1 + offset) for offset in STEP_OFFSETS]


def process(status: str, repetition: int, samples: Sequence[float] = (), **data: Any) -> StoredResult:
    data = {"status": status, "framework_version": VERSION, "first_step_s": 0.5, "warmup_s": [], "samples_s":
            list(samples), "flops_per_step": 2e6, "params": 10, "parity": {}, "import_s": 1.0, "build_s": 0.1,
            "cores_used": 1.0, "peak_rss_bytes": 1 << 20, "resources": {}, **data}
    return StoredResult(status=status, message="" if status == "ok" else "it broke", stderr_tail="",
                        command=["python"], exit_code=0, wall_s=1.0, started_at="t0", finished_at="t1", data=data,
                        repetition=repetition)


def record(store: Store, cell_id: int, cell: Cell, results: Sequence[StoredResult]) -> None:
    for result in results:
        store.record_result(cell_id, result)
    if all(result.status == "ok" for result in results):
        store.record_summary(cell_id, aggregate(store.ok_processes(cell_id), cell.batch_size, cell.threads, 100.0))


def timed(median: float, processes: int, shifts: Sequence[float] = PROCESS_SHIFTS,
           first_step_s: float = 0.5) -> list[StoredResult]:
    return [process("ok", index, steps(median, shifts[index]), first_step_s=first_step_s)
            for index in range(processes)]


def run(store: Store, cells: Sequence[tuple[Cell, list[StoredResult]]]) -> str:
    planned = [PlannedCell(cell, 60.0, f"key{index}") for index, (cell, _) in enumerate(cells)]
    run_id, ids = store.start_run(ENVIRONMENT, "test", 1, "", ["dlarena", "run"], "0.1.0", planned)
    for cell_id, (cell, results) in zip(ids, cells, strict=True):
        record(store, cell_id, cell, results)
    store.finish_run(run_id, "finished")
    return run_id


def verified(store: Store, framework: str, workload: str, status: str, code_version: str = "0.1.0") -> None:
    store.record_verification({
        "framework": framework, "workload": workload, "batch_size": 2, "status": status, "message": "",
        "framework_version": VERSION, "params": 10, "forward_error": 0.0, "loss_error": 0.0, "gradient_error": 0.0,
        "gradient_reference": None, "worst_parameter": None, "problems": [], "stderr_tail": ""}, code_version)


def seed(time_to_target: float | None, index: int, target: float = 0.9,
         accuracies: Sequence[float] = (0.95,) * 13) -> StoredResult:
    """One seed of an accuracy cell: an epoch of 1 s training per test accuracy in ``accuracies``."""
    epochs = [{"epoch": epoch, "train_s": 1.0, "data_s": 0.0, "eval_s": 0.1, "loss": 0.5, "test_accuracy": accuracy}
              for epoch, accuracy in enumerate(accuracies, start=1)]
    accuracy = {"dataset": "digits", "target_accuracy": target, "epochs_planned": 13,
                "final_accuracy": accuracies[-1], "time_to_target_s": time_to_target,
                "epochs_to_target": None if time_to_target is None else len(epochs), "epochs": epochs,
                "train_s": float(len(epochs)), "data_s": 0.0, "eval_s": 0.1 * len(epochs), "data_load_s": 0.1}
    return process("ok", index, steps(0.01, 0.0), accuracy=accuracy)


def written(factory: pytest.TempPathFactory, name: str, write: Callable[[Path], object]) -> Path:
    """A database written once by ``write`` in a fresh folder, for a module's tests that only read it."""
    path = factory.mktemp(name) / "results.db"
    write(path)
    return path
