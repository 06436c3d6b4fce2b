"""dlarena's public Python API; the command line is a thin layer over it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlarena.orchestrate.lock import machine_lock
from dlarena.orchestrate.orchestrator import RunSummary, resume_run, run_suite
from dlarena.orchestrate.progress import Progress
from dlarena.plan.suite import DEFAULT_SUITE, Suite, load_suite
from dlarena.report import export, markdown
from dlarena.report.annotate import annotate
from dlarena.report.costs import annotate_break_even
from dlarena.store.database import Store, default_db_path, new_run_id

if TYPE_CHECKING:
    from dlarena.orchestrate.verify import PairCheck


def select(
    suite: str = DEFAULT_SUITE,
    frameworks: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    scenarios: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    threads: Sequence[int] | str | None = None,
    timeout_s: float | None = None,
    repetitions: int | None = None,
    memory_limit_gib: float | None = None,
    epochs: int | None = None,
    target_accuracy: float | None = None,
    compile_cache: str | None = None,
) -> Suite:
    """A suite (built-in name or TOML path) with the given axes replaced, validated by planning it."""
    chosen = load_suite(suite).override(
        frameworks=tuple(frameworks) if frameworks else None,
        workloads=tuple(workloads) if workloads else None,
        scenarios=tuple(scenarios) if scenarios else None,
        devices=tuple(devices) if devices else None,
        precisions=tuple(precisions) if precisions else None,
        batch_sizes=tuple(batch_sizes) if batch_sizes else None,
        threads=threads if isinstance(threads, str) else (tuple(threads) if threads else None),
        timeout_s=timeout_s,
        repetitions=repetitions,
        memory_limit_gib=memory_limit_gib,
        epochs=epochs,
        target_accuracy=target_accuracy,
        compile_cache=compile_cache,
    )
    chosen.cells()  # every name and count checked before anything is written
    return chosen


def run(
    suite: Suite, db: Path | None = None, argv: Sequence[str] = (), progress: bool = False, wait: bool = True,
) -> RunSummary:
    """Measure a suite, holding the machine's measuring lock (waiting for it, or BusyError)."""
    path = db or default_db_path()
    store = Store.open(path)
    display = Progress(enabled=progress)
    run_id = new_run_id()
    try:
        with machine_lock(run_id, path, wait=wait, on_wait=display.note):
            return run_suite(suite, store, argv, progress=display, run_id=run_id)
    finally:
        store.close()


def resume(
    run_id: str | None = None, db: Path | None = None, argv: Sequence[str] = (), progress: bool = False,
    wait: bool = True, allow_changes: bool = False,
) -> RunSummary:
    """Run the processes a run still lacks (the latest run by default); see orchestrator.resume_run."""
    path = db or default_db_path()
    store = Store.open(path, create=False)
    display = Progress(enabled=progress)
    try:
        chosen = str(store.run(run_id)["id"])
        with machine_lock(chosen, path, wait=wait, on_wait=display.note):
            return resume_run(store, chosen, argv, allow_changes, progress=display)
    finally:
        store.close()


def _read(db: Path | None, run_id: str | None) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    store = Store.open(db or default_db_path(), create=False)
    try:
        run_row = dict(store.run(run_id))
        run_row["peaks"] = store.peaks(run_row["id"])
        rows = store.cell_rows(run_row["id"])
        annotate(rows, store.verification_statuses())
        annotate_break_even(rows)
        return run_row, store.environment(run_row["environment_id"]), rows
    finally:
        store.close()


def report(db: Path | None = None, run_id: str | None = None) -> str:
    """The Markdown report of a run (the latest by default)."""
    return markdown.render(*_read(db, run_id))


def compare(run_a: str, run_b: str | None = None, frameworks: Sequence[str] | None = None,
            db: Path | None = None) -> str:
    """Markdown verdicts of run B against run A, or of framework B against framework A within one run."""
    from dlarena.report.comparison import compare_runs

    store = Store.open(db or default_db_path(), create=False)
    try:
        return compare_runs(store, run_a, run_b, frameworks)
    finally:
        store.close()


def export_rows(db: Path | None = None, run_id: str | None = None, fmt: str = "csv") -> str:
    rows = _read(db, run_id)[2]
    for row in rows:
        row.pop("config", None)
    return export.to_csv(rows) if fmt == "csv" else export.to_json(rows)


def verify(
    frameworks: Sequence[str] | None = None, workloads: Sequence[str] | None = None, full: bool = False,
    db: Path | None = None, on_check: Callable[[PairCheck], None] | None = None,
) -> list[PairCheck]:
    """Run `dlarena verify` and store every pair's verdict; see orchestrate/verify.py."""
    from dlarena.environment import code_version
    from dlarena.frameworks.registry import FRAMEWORKS, framework_info
    from dlarena.orchestrate import verify as checks
    from dlarena.plan.suite import available_cores
    from dlarena.spec.catalogue import CATALOGUE

    for name in frameworks or ():
        framework_info(name)
    if workloads == ["all"]:
        workloads = [name for name, workload in CATALOGUE.items() if not workload.is_small]
    names = checks.workload_names(workloads or _quick_workloads(), full)
    store = Store.open(db or default_db_path())
    version = code_version()
    try:
        def record(check: PairCheck) -> None:
            store.record_verification(check.as_dict(), version)
            if on_check:
                on_check(check)

        return checks.verify(
            frameworks or list(FRAMEWORKS), names,
            checks.VERIFY_FULL_BATCH_SIZE if full else checks.VERIFY_BATCH_SIZE,
            threads=available_cores(), on_check=record,
        )
    finally:
        store.close()


def _quick_workloads() -> list[str]:
    return list(dict.fromkeys(w for sweep in load_suite(DEFAULT_SUITE).sweeps for w in sweep.workloads))


def verify_table(checks: Sequence[PairCheck]) -> str:
    """Maximum relative errors per framework and workload, as Markdown."""
    def error(value: float | None) -> str:
        return "" if value is None else f"{value:.1e}"

    lines = ["| workload | framework | status | params | forward f32 | loss f32 | forward f64 | gradients f64 | vs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for check in checks:
        lines.append(
            f"| {check.workload} | {check.framework} | {check.status} | {check.params or ''} |"
            f" {error(check.forward_error)} | {error(check.loss_error)} | {error(check.forward64_error)} |"
            f" {error(check.gradient_error)} | {check.gradient_reference or ''} |"
        )
    from dlarena.orchestrate import verify as tolerances

    lines.append("")
    lines.append(
        "Maximum relative errors: forward and loss against the NumPy float64 oracle, gradients against the"
        f" reference framework. Tolerances: float32 forward {tolerances.FORWARD_TOLERANCE:g}, loss"
        f" {tolerances.LOSS_TOLERANCE:g}; float64 forward {tolerances.FORWARD64_TOLERANCE:g}, loss"
        f" {tolerances.LOSS64_TOLERANCE:g}, gradients {tolerances.GRADIENT64_TOLERANCE:g} (gradients are compared"
        " in float64: in float32 a ReLU input within rounding of zero takes different branches in different"
        " frameworks)."
    )
    problems = [c for c in checks if c.status != "ok" and c.message]
    if problems:
        lines.append("")
        lines += [f"- {c.workload} {c.framework}: {c.status}: {c.message}" for c in problems]
    return "\n".join(lines) + "\n"
