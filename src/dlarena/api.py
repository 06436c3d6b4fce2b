"""dlarena's public Python API; the command line is a thin layer over it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlarena.orchestrate.orchestrator import RunSummary, run_suite
from dlarena.orchestrate.progress import Progress
from dlarena.plan.suite import DEFAULT_SUITE, Suite, load_suite
from dlarena.report import export, markdown
from dlarena.store.database import Store, default_db_path


def select(
    suite: str = DEFAULT_SUITE,
    frameworks: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    scenarios: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    threads: Sequence[int] | str | None = None,
    timeout_s: float | None = None,
) -> Suite:
    """A suite (built-in name or TOML path) with the given axes replaced, validated by planning it."""
    chosen = load_suite(suite).override(
        frameworks=tuple(frameworks) if frameworks else None,
        workloads=tuple(workloads) if workloads else None,
        scenarios=tuple(scenarios) if scenarios else None,
        devices=tuple(devices) if devices else None,
        batch_sizes=tuple(batch_sizes) if batch_sizes else None,
        threads=threads if isinstance(threads, str) else (tuple(threads) if threads else None),
        timeout_s=timeout_s,
    )
    chosen.cells()  # every name and count checked before anything is written
    return chosen


def run(suite: Suite, db: Path | None = None, argv: Sequence[str] = (), progress: bool = False) -> RunSummary:
    store = Store.open(db or default_db_path())
    try:
        return run_suite(suite, store, argv, progress=Progress(enabled=progress))
    finally:
        store.close()


def _read(db: Path | None, run_id: str | None) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    store = Store.open(db or default_db_path(), create=False)
    try:
        run_row = dict(store.run(run_id))
        return run_row, store.environment(run_row["environment_id"]), store.cell_rows(run_row["id"])
    finally:
        store.close()


def report(db: Path | None = None, run_id: str | None = None) -> str:
    """The Markdown report of a run (the latest by default)."""
    return markdown.render(*_read(db, run_id))


def export_rows(db: Path | None = None, run_id: str | None = None, fmt: str = "csv") -> str:
    rows = _read(db, run_id)[2]
    for row in rows:
        row.pop("config", None)
    return export.to_csv(rows) if fmt == "csv" else export.to_json(rows)
