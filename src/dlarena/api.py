"""dlarena's public Python API; the command line is a thin layer over it.

Measure, then read the results as rows or a pandas DataFrame::

    from dlarena import api

    suite = api.select("quick", frameworks="torch,jax", workloads="fcn5-small", scenarios="train")
    summary = api.run(suite, db="results/dlarena.db")        # measures; RunSummary with the run's id
    rows = api.results(db="results/dlarena.db")               # one dict per cell of the latest run
    frame = api.dataframe(db="results/dlarena.db")            # the same rows as a DataFrame (dlarena[pandas])
    print(api.report(db="results/dlarena.db"))                # the Markdown report
    print(api.compare("latest", frameworks="torch,jax", db="results/dlarena.db"))

Every axis of `select` takes a comma-separated string or a sequence. A mistake (an unknown name, a
missing run or database) raises ``DlarenaError`` with one sentence that names the valid choices.
The rows' columns are those of `dlarena export` (report/export.COLUMNS, described in the README).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlarena.errors import DlarenaError, UnknownNameError
from dlarena.orchestrate.lock import machine_lock
from dlarena.orchestrate.orchestrator import RunSummary, check_placement, nothing_to_resume, resume_run, run_suite
from dlarena.orchestrate.progress import Progress
from dlarena.plan.suite import DEFAULT_SUITE, Suite, load_suite
from dlarena.report import export, markdown
from dlarena.report.annotate import annotate
from dlarena.report.costs import annotate_break_even
from dlarena.store import verdicts
from dlarena.store.database import Store, check_location, default_db_path, new_run_id

if TYPE_CHECKING:
    from dlarena.orchestrate.ray_executor import Placement, RayExecutor
    from dlarena.orchestrate.verify import PairCheck


Names = str | Sequence[str]
Counts = str | int | Sequence[int]


def _names(value: Names | None) -> tuple[str, ...] | None:
    """An axis given as `"torch,jax"` or `["torch", "jax"]`; None (or empty) keeps the suite's."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = tuple(str(item).strip() for item in items if str(item).strip())
    return names or None


def _counts(what: str, value: Counts | None) -> tuple[int, ...] | None:
    """Positive integers given as `"1,2"`, `2` or `[1, 2]`; None (or empty) keeps the suite's."""
    items: Sequence[Any] = [value] if isinstance(value, int) else (
        value.split(",") if isinstance(value, str) else list(value or ()))
    counts = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if isinstance(item, bool) or not text.isdigit() or int(text) < 1:
            raise DlarenaError(f"{what} must be positive integers separated by commas, got {text!r}")
        counts.append(int(text))
    return tuple(counts) or None


def _database(db: str | Path | None) -> Path:
    return Path(db) if db is not None else default_db_path()


def select(
    suite: str = DEFAULT_SUITE,
    frameworks: Names | None = None,
    workloads: Names | None = None,
    scenarios: Names | None = None,
    devices: Names | None = None,
    precisions: Names | None = None,
    batch_sizes: Counts | None = None,
    threads: Counts | None = None,
    timeout_s: float | None = None,
    repetitions: int | None = None,
    memory_limit_gib: float | None = None,
    epochs: int | None = None,
    target_accuracy: float | None = None,
    compile_cache: str | None = None,
    denormals: str | None = None,
    target_ci: float | None = None,
    max_processes: int | None = None,
    time_budget_s: float | None = None,
    replicas: Counts | None = None,
) -> Suite:
    """A suite (built-in name or TOML path) with the given axes replaced, validated by planning it.

    Each axis takes a comma-separated string (`frameworks="torch,jax"`, `threads="1,2"`) or a
    sequence; `threads` also takes `"all"` (powers of two) or `"max"` (every core). None keeps the
    suite's own. Raises DlarenaError on an unknown name or a bad count, before anything is written.
    """
    every = threads.strip() if isinstance(threads, str) and threads.strip() in ("all", "max") else None
    chosen = load_suite(suite).override(
        frameworks=_names(frameworks),
        workloads=_names(workloads),
        scenarios=_names(scenarios),
        devices=_names(devices),
        precisions=_names(precisions),
        batch_sizes=_counts("batch sizes", batch_sizes),
        threads=every or _counts("thread counts", threads),
        replicas=_counts("replica counts", replicas),
        timeout_s=timeout_s,
        repetitions=repetitions,
        memory_limit_gib=memory_limit_gib,
        epochs=epochs,
        target_accuracy=target_accuracy,
        compile_cache=compile_cache,
        denormals=denormals,
        target_ci=target_ci,
        max_processes=max_processes,
        time_budget_s=time_budget_s,
    )
    chosen.cells()  # every name and count checked before anything is written
    return chosen


def run(
    suite: Suite, db: str | Path | None = None, argv: Sequence[str] = (), progress: bool = False, wait: bool = True,
    cluster: Placement | None = None,
) -> RunSummary:
    """Measure a suite, holding the machine's measuring lock (waiting for it, or BusyError); on the
    nodes of a Ray ``cluster`` when given (orchestrate/ray_executor.py), else on this machine.

    A new database is created only once the lock is held: a run refused (``wait=False``) or given up
    while waiting leaves nothing behind, not even a mistyped --db folder. Its location is checked
    first, so that a bad one is refused at once rather than after the wait. The run's id and start
    time are taken when it starts measuring, not when it was queued.
    """
    path = _database(db)
    store = Store.open(path) if path.exists() else None  # a foreign or newer file is refused at once
    if store is None:
        check_location(path)
    executor = _cluster_executor(cluster, suite.memory_limit_bytes())  # a cluster that cannot serve: at once
    nodes = executor.node_names() if executor is not None and cluster is not None and cluster.spread else []
    display = Progress(enabled=progress)
    try:
        with machine_lock(path, wait=wait, on_wait=display.waiting) as held:
            run_id = new_run_id()
            held.announce(run_id)
            store = store or Store.open(path)
            summary = run_suite(suite, store, argv, executor=executor, progress=display, run_id=run_id, nodes=nodes,
                                placement=cluster.stored() if cluster is not None else None)
            # The verdicts of what it measured, from the machine's record: the database stands alone.
            verdicts.copy_into(store, str(store.run(run_id)["code_version"]),
                               {cell.framework for cell, _ in suite.cells()})
            return summary
    finally:
        display.close()  # a bar or waiting line left by an error or Ctrl-C leaves the terminal
        if store is not None:
            store.close()


def _cluster_executor(cluster: Placement | None, memory_limit_bytes: int | None) -> RayExecutor | None:
    if cluster is None:
        return None
    from dlarena.orchestrate.ray_executor import RayExecutor

    return RayExecutor(cluster.address, cluster.selector, memory_limit_bytes)


def resume(
    run_id: str | None = None, db: str | Path | None = None, argv: Sequence[str] = (), progress: bool = False,
    wait: bool = True, allow_changes: bool = False, cluster: Placement | None = None,
) -> RunSummary:
    """Run the processes a run still lacks (the latest run by default); see orchestrator.resume_run.

    A run with nothing left to run is answered at once (``RunSummary.nothing_to_resume``), without
    waiting for the machine.
    """
    path = _database(db)
    store = Store.open(path, create=False)
    display = Progress(enabled=progress)
    try:
        chosen = str(store.run(run_id)["id"])
        done = nothing_to_resume(store, chosen)
        if done is not None:
            return done
        run_row = dict(store.run(chosen))
        check_placement(run_row, cluster is not None)  # before any cluster is joined
        from dlarena.orchestrate.ray_executor import Placement

        executor = _cluster_executor(Placement.resumed(json.loads(run_row["placement"]), cluster.address)
                                     if cluster is not None else None, run_row["memory_limit_bytes"])
        with machine_lock(path, wait=wait, on_wait=display.waiting) as held:
            held.announce(chosen)
            return resume_run(store, chosen, argv, allow_changes, executor=executor, progress=display)
    finally:
        display.close()  # a bar or waiting line left by an error or Ctrl-C leaves the terminal
        store.close()


def runs(db: str | Path | None = None) -> list[dict[str, Any]]:
    """Every run of a database, oldest first: id, suite, start and end, status, cells by state, processes."""
    store = Store.open(_database(db), create=False)
    try:
        return store.runs()
    finally:
        store.close()


def _read(db: str | Path | None, run_id: str | None) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    store = Store.open(_database(db), create=False)
    try:
        run_row = dict(store.run(run_id))
        run_row["peaks"] = store.peaks(run_row["id"])
        run_row["canary"] = store.canary_readings(run_row["id"])
        run_row["nodes"] = [{**node, "peaks": store.peaks(run_row["id"], node["node"])}
                            for node in store.run_nodes(run_row["id"])]
        rows = store.cell_rows(run_row["id"])
        annotate(rows, verdicts.statuses(store, str(run_row["code_version"])))
        annotate_break_even(rows)
        return run_row, store.environment(run_row["environment_id"]), rows
    finally:
        store.close()


def report(db: str | Path | None = None, run_id: str | None = None) -> str:
    """The Markdown report of a run (the latest by default), opening with which framework is fastest."""
    from dlarena.report.comparison import compare_nodes
    from dlarena.report.ranking import rank_rows

    run_row, environment, rows = _read(db, run_id)
    store = Store.open(_database(db), create=False)
    try:
        rankings = rank_rows(store, rows)
        answers = _capabilities_of(store, rows)
        # a run that measured every cell on every node (--spread): each node against the first
        spread = json.loads(run_row["placement"] or "{}").get("spread", False)
        names = list(dict.fromkeys(str(node["node"]) for node in run_row["nodes"])) if spread else []
        nodes = [compare_nodes(store, str(run_row["id"]), [names[0], other]) for other in names[1:]]
    finally:
        store.close()
    return markdown.render(run_row, environment, rows, rankings, answers, nodes)


def _capabilities_of(store: Store, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The database's latest probe answers for the frameworks of a run's rows."""
    frameworks = {row["framework"] for row in rows}
    return [answer for answer in store.probe_answers() if answer["framework"] in frameworks]


def report_page(db: str | Path | None = None, run_id: str | None = None) -> str:
    """The run's HTML report (the latest run by default): one self-contained page, report/html."""
    from dlarena.report import html

    store, run_row, environment, rows = _report_inputs(db, run_id)
    try:
        from dlarena.report.ranking import rank_rows

        return html.render(run_row, environment, rows, rank_rows(store, rows), store.ok_processes,
                           _capabilities_of(store, rows))
    finally:
        store.close()


def report_images(db: str | Path | None = None, run_id: str | None = None, fmt: str = "svg") -> dict[str, bytes]:
    """The HTML report's charts as static files (``fmt``: svg or png), by file name."""
    from dlarena.report import html, images

    store, _, _, rows = _report_inputs(db, run_id)
    try:
        return images.render(html.build_charts(rows, store.ok_processes), fmt)
    finally:
        store.close()


def _report_inputs(db: str | Path | None, run_id: str | None) -> tuple[Store, dict[str, Any], dict[str, Any],
                                                                         list[dict[str, Any]]]:
    """What a report reads, refusing a run without a single result; the caller closes the store."""
    run_row, environment, rows = _read(db, run_id)
    if not any(row["status"] != "pending" for row in rows):
        raise DlarenaError(f"run {run_row['id']} has no results yet: nothing to report (`dlarena runs` lists the"
                           " runs and their cells)")
    return Store.open(_database(db), create=False), run_row, environment, rows


def compare(run_a: str, run_b: str | None = None, frameworks: Names | None = None,
            db: str | Path | None = None, baseline: str | None = None, nodes: Names | None = None) -> str:
    """Markdown verdicts: run B against run A, framework B against A, several frameworks ranked, or
    cluster node B against node A.

    ``frameworks`` (`"torch,jax,tensorflow"` or a sequence): with two and no ``baseline``, B against
    A; with more, or a named ``baseline``, every configuration of run A ranked against its fastest
    framework or against ``baseline``. ``nodes`` (`"a,b"`): the cells of run A measured on both nodes
    (`dlarena run --executor ray --spread`), node B against node A.
    """
    from dlarena.report.comparison import compare_runs

    store = Store.open(_database(db), create=False)
    try:
        return compare_runs(store, run_a, run_b, _names(frameworks), baseline, _names(nodes))
    finally:
        store.close()


def compare_page(run_a: str, run_b: str | None = None, frameworks: Names | None = None,
                 db: str | Path | None = None, baseline: str | None = None, nodes: Names | None = None) -> str:
    """`compare` as one self-contained HTML page with a forest plot of the ratios (report/html)."""
    from dlarena.environment import code_version
    from dlarena.report import html
    from dlarena.report.comparison import compare_nodes, comparison

    store = Store.open(_database(db), create=False)
    try:
        chosen = _names(nodes)
        found = compare_nodes(store, run_a, chosen, run_b, _names(frameworks)) if chosen else comparison(
            store, run_a, run_b, _names(frameworks), baseline)
        return html.render_comparison(found, code_version())
    finally:
        store.close()


def export_rows(db: str | Path | None = None, run_id: str | None = None, fmt: str = "csv") -> str:
    """`dlarena export`: the rows of `results` as CSV or JSON text."""
    rows = _read(db, run_id)[2]
    return export.to_csv(rows) if fmt == "csv" else export.to_json(rows)


def results(db: str | Path | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
    """One dict per cell of a run (the latest by default), keyed by `dlarena export`'s columns.

    Values are Python numbers, strings, booleans or None (a figure the cell does not have); times are
    in seconds, memory in bytes. See the README's "Python API" for the columns that need a word.
    """
    return export.tidy(_read(db, run_id)[2])


def dataframe(db: str | Path | None = None, run_id: str | None = None) -> Any:
    """`results` as a pandas DataFrame, one row per cell; needs pandas (`pip install 'dlarena[pandas]'`)."""
    try:
        import pandas
    except ImportError:
        raise DlarenaError("dlarena.api.dataframe needs pandas, which is not installed: pip install"
                           " 'dlarena[pandas]' (or use dlarena.api.results for plain rows)") from None
    return pandas.DataFrame(results(db, run_id), columns=list(export.COLUMNS))


def verify(
    frameworks: Sequence[str] | None = None, workloads: Sequence[str] | None = None, full: bool = False,
    db: Path | None = None, on_check: Callable[[PairCheck], None] | None = None,
    on_progress: Callable[[str], None] | None = None, wait: bool = True, progress: bool = False,
    precision: str = "float32",
) -> list[PairCheck]:
    """Run `dlarena verify` and store every pair's verdict; see orchestrate/verify.py. ``precision``: the
    one checked beside float64 (float32, bfloat16, mixed-bf16, or on a GPU float16 and mixed-fp16:
    orchestrate/verify.TOLERANCES); a framework that does not run it is `unsupported` there.

    It holds the machine's measuring lock, as a run does: its workers would take cores from a
    measurement in progress. Each verdict goes to ``db`` and to the machine's record
    (store/verdicts.py), where runs in every database find it.
    """
    from dlarena.environment import code_version
    from dlarena.frameworks.registry import default_frameworks, framework_info
    from dlarena.orchestrate import verify as checks
    from dlarena.plan.suite import available_cores
    from dlarena.spec.catalogue import CATALOGUE
    from dlarena.store import verdicts

    for name in frameworks or ():
        framework_info(name)
    if precision not in checks.TOLERANCES:
        raise UnknownNameError("precision to verify", precision, checks.TOLERANCES)
    if workloads is not None and list(workloads) == ["all"]:
        workloads = [name for name, workload in CATALOGUE.items() if not workload.is_small]
    names = checks.workload_names(workloads or _quick_workloads(), full)
    path = _database(db)
    check_location(path)
    display = Progress(enabled=progress)
    version = code_version()
    with machine_lock(path, wait=wait, on_wait=display.waiting) as held:
        held.announce("verify")
        display.end_waiting()  # verify's own lines follow; no run bar ends the waiting line for it
        store = Store.open(path)
        record = verdicts.open_record(create=True)
        if record is not None and record.path.resolve() == path.resolve():  # --db is the record itself
            record.close()
            record = None
        stores = [store] if record is None else [store, record]
        try:
            def keep(check: PairCheck) -> None:
                verdicts.record(stores, check.as_dict(), version)
                if on_check:
                    on_check(check)

            return checks.verify(
                frameworks or list(default_frameworks()), names,
                checks.VERIFY_FULL_BATCH_SIZE if full else checks.VERIFY_BATCH_SIZE,
                threads=available_cores(), on_check=keep, on_progress=on_progress,
                networks_per_worker=checks.FULL_NETWORKS_PER_WORKER if full else None,
                # Side by side on small twins; one at a time at the published sizes (gigabytes each).
                jobs=1 if full else available_cores(), precision=precision,
            )
        finally:
            for opened in stores:
                opened.close()


def capabilities(
    frameworks: Sequence[str] | None = None, probes: Sequence[str] | None = None, db: Path | None = None,
    on_answer: Callable[[Any], None] | None = None, wait: bool = True, progress: bool = False,
) -> list[dict[str, Any]]:
    """Ask every probe (dlarena/probes) of every framework (default: those of dlarena's own environment)
    and store each answer; see orchestrate/capabilities.py. Holds the machine's measuring lock, as
    verify does: the probes' workers would take cores from a measurement in progress."""
    from dlarena.environment import code_version, snapshot
    from dlarena.frameworks.registry import default_frameworks, framework_info
    from dlarena.orchestrate.capabilities import capabilities as ask_all
    from dlarena.orchestrate.executor import LocalExecutor
    from dlarena.probes.registry import PROBES, probe_info

    for name in frameworks or ():
        framework_info(name)
    for name in probes or ():
        probe_info(name)
    path = _database(db)
    check_location(path)
    display = Progress(enabled=progress)
    with machine_lock(path, wait=wait, on_wait=display.waiting) as held:
        held.announce("capabilities")
        display.end_waiting()
        store = Store.open(path)
        try:
            version, machine = code_version(), snapshot()

            def keep(answer: Any) -> None:
                store.record_probe(answer.as_dict(), version, machine)
                if on_answer:
                    on_answer(answer)

            answers = ask_all(list(frameworks or default_frameworks()), list(probes or PROBES), LocalExecutor(),
                              store, version, keep)
        finally:
            store.close()
    return [answer.as_dict() for answer in answers]


def _quick_workloads() -> list[str]:
    return list(dict.fromkeys(w for sweep in load_suite(DEFAULT_SUITE).sweeps for w in sweep.workloads))


def verify_table(checks: Sequence[PairCheck]) -> str:
    """Maximum relative errors per framework and workload, as Markdown, then what went wrong: the
    pairs whose timings are struck out, and the framework bugs found in a precision not timed."""
    from dlarena.orchestrate import verify as tolerances

    def error(value: float | None) -> str:
        return "" if value is None else f"{value:.1e}"

    precision = checks[0].precision if checks else "float32"  # one verify checks one precision
    limits = tolerances.TOLERANCES[precision]
    short = {"float32": "f32", "bfloat16": "bf16", "mixed-bf16": "mixed bf16"}.get(precision, precision)
    lines = [f"| workload | framework | version | status | params | forward {short} | loss {short} |"
             f" gradients {short} | forward f64 | gradients f64 | vs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for check in checks:
        lines.append(
            f"| {check.workload} | {check.framework} | {check.framework_version or ''} | {check.status}"
            f"{' (float64 bug)' if check.framework_bugs else ''} | {check.params or ''} |"
            f" {error(check.forward_error)} | {error(check.loss_error)} | {error(check.gradient32_error)} |"
            f" {error(check.forward64_error)} | {error(check.gradient_error)} | {check.gradient_reference or ''} |"
        )
    lines.append("")
    floor = (f" (and at least {limits.forward_floor:.2g} for the forward: closer, it was computed in more than"
             f" {precision})" if limits.forward_floor else "")
    lines.append(
        "Maximum relative errors: forward and loss against the NumPy float64 oracle, gradients against the"
        f" reference framework's float64 gradients. Tolerances: {precision} forward {limits.forward:.2g}, loss"
        f" {limits.loss:.2g}, gradients {limits.gradient:.2g}{floor}; float64 forward"
        f" {tolerances.FORWARD64_TOLERANCE:g}, loss {tolerances.LOSS64_TOLERANCE:g}, gradients"
        f" {tolerances.GRADIENT64_TOLERANCE:g}. The {precision} computation (what is timed) decides whether timings"
        f" count; a {precision} gradient is held to its tolerance where the oracle keeps every ReLU and max-pool"
        f" input farther than {limits.kink_margin:.2g} of its layer's largest from the kink, and elsewhere the"
        " float64 gradients decide."
    )
    undefined = [c for c in checks if c.float32_gradients.startswith("not defined")]
    if undefined:
        lines.append("")
        lines += [f"- {c.workload} {c.framework}: {precision} gradient {c.float32_gradients}" for c in undefined]
    problems = [c for c in checks if c.status != "ok" and c.message]
    if problems:
        lines.append("")
        lines += [f"- {c.workload} {c.framework}: {c.status}: {c.message}" for c in problems]
    bugs = tolerances.framework_bugs(checks)
    if bugs:
        lines += ["", "Framework bugs found (in a precision that is not timed):", ""]
        lines += [f"- {line}" for line in bugs]
    return "\n".join(lines) + "\n"
