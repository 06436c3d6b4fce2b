"""The SQLite results database: every result is committed the moment its cell ends."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlarena.environment import fingerprint
from dlarena.errors import DlarenaError
from dlarena.measure.aggregate import CellFigures
from dlarena.measure.peak import Peak
from dlarena.measure.repetitions import Need
from dlarena.plan.cell import Cell
from dlarena.store.schema import MIGRATIONS, SCHEMA_VERSION

# The default location, relative to the working directory, overridden by --db or $DLARENA_DB.
DEFAULT_DB = Path("results") / "dlarena.db"
DB_VARIABLE = "DLARENA_DB"
# How long a connection waits for another writer's lock before giving up (SQLite busy timeout).
BUSY_TIMEOUT_S = 30.0
# Keep this much of a failed worker's standard error: enough for a Python traceback's last frames.
STDERR_TAIL_CHARS = 4000


class StoreError(DlarenaError):
    """A database that cannot be opened, read or written."""


def default_db_path() -> Path:
    return Path(os.environ.get(DB_VARIABLE) or DEFAULT_DB)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    timeout_s: float
    key: str
    repetitions: int | None = None  # worker processes for this cell; None: the run's


@dataclass(frozen=True)
class StoredResult:
    """What the orchestrator hands the store when a cell ends."""

    status: str
    message: str
    stderr_tail: str
    command: Sequence[str]
    exit_code: int | None
    wall_s: float
    started_at: str
    finished_at: str
    data: dict[str, Any]  # the worker's JSON result ({} when the worker left none)
    repetition: int = 0  # which of the cell's worker processes this was
    node: str | None = None  # the cluster node it ran on; None: the run's own machine
    machine: dict[str, Any] | None = None  # that node's snapshot (environment.snapshot)
    # The canary's readings on that node before and after the process (not stored as such: the
    # orchestrator's judgement of them goes into ``data["canary"]``).
    canary_s: tuple[float, float] | None = None


# The worker result's step times: stored once, in the samples table, not again in the result's JSON.
SAMPLE_KEYS = ("samples_s", "warmup_s")
# The columns of a verdict (schema.py's verifications table), in the order they are written.
_VERIFICATION_COLUMNS = (
    "checked_at", "framework", "workload", "batch_size", "status", "message", "framework_version", "code_version",
    "params", "forward_error", "loss_error", "gradient_error", "gradient_reference", "worst_parameter", "data",
    "precision",
)


class Store:
    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, path: Path, create: bool = True) -> Store:
        """Open (and with ``create``, create or migrate) the database at ``path``."""
        if not path.exists():
            if not create:
                raise StoreError(f"there is no results database at {path}; run `dlarena run` first or pass --db")
            _check_writable_location(path)
        elif path.is_dir():
            raise StoreError(f"the database path {path} is a folder; give a file path with --db")
        elif create and not os.access(path, os.W_OK):
            raise StoreError(f"cannot write the database {path}: permission denied; choose another --db")
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA foreign_keys = ON")
            version = _schema_version(connection, path)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer dlarena (schema {version}, this one reads up to "
                    f"{SCHEMA_VERSION}); upgrade dlarena or choose another --db"
                )
            if version < SCHEMA_VERSION:
                if not create:
                    raise StoreError(f"{path} has an old schema ({version}); run `dlarena run` once to upgrade it")
                _migrate(connection, version)
            if create:
                connection.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{path} is not a dlarena results database ({error})") from None
        return cls(connection, path)

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(f"cannot write to {self.path}: {error}") from None
        try:
            yield self.connection
        except sqlite3.OperationalError as error:  # a full disk, a read-only or vanished file
            self._rollback()
            raise StoreError(f"cannot write to {self.path}: {error}; nothing of this write was kept") from None
        except BaseException:
            self._rollback()
            raise
        try:
            self.connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            raise StoreError(f"cannot write to {self.path}: {error}") from None

    def _rollback(self) -> None:
        if self.connection.in_transaction:  # SQLite rolls back by itself after some errors (SQLITE_FULL)
            self.connection.execute("ROLLBACK")

    # --- writing ----------------------------------------------------------------------------------

    def start_run(
        self, environment: dict[str, Any], suite_name: str, suite_version: int, suite_source: str,
        argv: Sequence[str], code_version: str, cells: Sequence[PlannedCell], repetitions: int = 1,
        run_id: str | None = None, memory_limit_bytes: int | None = None, need: Need | None = None,
        placement: dict[str, Any] | None = None,
    ) -> tuple[str, list[int]]:
        """Record a new run with its planned cells and what its timing cells need (measure/repetitions.py;
        None: a fixed count); returns the run id and the cells' ids."""
        run_id = run_id or new_run_id()
        with self.transaction() as db:
            environment_id = self._environment_id(db, environment)
            db.execute(
                "INSERT INTO runs (id, started_at, status, suite_name, suite_version, suite_source, argv,"
                " code_version, environment_id, repetitions, memory_limit_bytes, target_ci, max_processes,"
                " time_budget_s, placement) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, now(), suite_name, suite_version, suite_source, json.dumps(list(argv)),
                 code_version, environment_id, repetitions, memory_limit_bytes,
                 need.target_ci if need else None, need.max_processes if need else None,
                 need.time_budget_s if need else None,
                 json.dumps(placement, sort_keys=True) if placement is not None else None),
            )
            cell_ids = []
            for position, planned in enumerate(cells):
                cell = planned.cell
                cursor = db.execute(
                    "INSERT INTO cells (run_id, position, cell_key, framework, workload, scenario, device,"
                    " batch_size, threads, precision, timeout_s, config, repetitions, node)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, position, planned.key, cell.framework, cell.workload, cell.scenario,
                     cell.device, cell.batch_size, cell.threads, cell.precision, planned.timeout_s,
                     cell.to_json(), planned.repetitions or repetitions, cell.node),
                )
                cell_ids.append(int(cursor.lastrowid or 0))
        return run_id, cell_ids

    @staticmethod
    def _environment_id(db: sqlite3.Connection, environment: dict[str, Any]) -> int:
        key = fingerprint(environment)
        row = db.execute("SELECT id FROM environments WHERE fingerprint = ?", (key,)).fetchone()
        if row:
            return int(row["id"])
        cursor = db.execute(
            "INSERT INTO environments (fingerprint, cpu_model, cores, memory_bytes, os, python, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, environment["cpu_model"], environment["cores"], environment["memory_bytes"],
             environment["os"], environment["python"], json.dumps(environment, sort_keys=True)),
        )
        return int(cursor.lastrowid or 0)

    def record_result(self, cell_id: int, result: StoredResult) -> None:
        """Store one finished worker process of a cell: its result and raw samples, in one transaction."""
        data = result.data
        with self.transaction() as db:
            machine_id = self._environment_id(db, result.machine) if result.machine else None
            cursor = db.execute(
                "INSERT INTO results (cell_id, repetition, status, message, stderr_tail, command, exit_code,"
                " framework_version, params, flops_per_step, import_s, build_s, first_step_s, cores_used,"
                " peak_rss_bytes, memory_growth_bytes, wall_s, started_at, finished_at, parity, data, node,"
                " environment_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cell_id, result.repetition, result.status, result.message,
                 result.stderr_tail[-STDERR_TAIL_CHARS:], json.dumps(list(result.command)), result.exit_code,
                 data.get("framework_version"), data.get("params"), data.get("flops_per_step"),
                 data.get("import_s"), data.get("build_s"), data.get("first_step_s"), data.get("cores_used"),
                 data.get("peak_rss_bytes"), data.get("resources", {}).get("memory_growth_bytes"), result.wall_s,
                 result.started_at, result.finished_at, json.dumps(data.get("parity", {}), sort_keys=True),
                 json.dumps({key: value for key, value in data.items() if key not in SAMPLE_KEYS}),
                 result.node, machine_id),
            )
            result_id = cursor.lastrowid
            phases = [("first", [data["first_step_s"]] if "first_step_s" in data else []),
                      ("warmup", data.get("warmup_s", [])), ("steady", data.get("samples_s", []))]
            db.executemany(
                "INSERT INTO samples (result_id, phase, step, seconds) VALUES (?, ?, ?, ?)",
                [(result_id, phase, step, seconds)
                 for phase, values in phases for step, seconds in enumerate(values)],
            )
            db.executemany(
                "INSERT INTO epochs (result_id, epoch, train_s, data_s, eval_s, loss, test_accuracy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(result_id, e["epoch"], e["train_s"], e["data_s"], e["eval_s"], e["loss"], e["test_accuracy"])
                 for e in data.get("accuracy", {}).get("epochs", [])],
            )

    def record_summary(self, cell_id: int, figures: CellFigures) -> None:
        """Replace a cell's summary, recomputed from all its ok processes so far."""
        summary = figures.summary
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO summaries (cell_id, n, median_s, mean_s, stdev_s, min_s, max_s, q1_s, q3_s,"
                " throughput, gflops, processes, ci_low_s, ci_high_s, p50_s, p90_s, p99_s, process_spread,"
                " import_s, build_s, first_step_s, cores_used, cpu_utilisation, peak_rss_bytes,"
                " memory_growth_bytes, peak_gflops, peak_percent, warnings, data, accuracy, time_to_target_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cell_id, summary.n, summary.median_s, summary.mean_s, summary.stdev_s, summary.min_s,
                 summary.max_s, summary.q1_s, summary.q3_s, figures.throughput, figures.gflops, summary.processes,
                 summary.ci_low_s, summary.ci_high_s, summary.p50_s, summary.p90_s, summary.p99_s,
                 summary.process_spread, figures.import_s, figures.build_s, figures.first_step_s,
                 figures.cores_used, figures.cpu_utilisation, figures.peak_rss_bytes, figures.memory_growth_bytes,
                 figures.peak_gflops, figures.peak_percent, json.dumps(list(summary.warnings)),
                 json.dumps({**figures.extra, **({"training": figures.training} if figures.training else {})},
                            sort_keys=True),
                 figures.accuracy, figures.time_to_target_s),
            )

    def set_cell_repetitions(self, cell_id: int, repetitions: int) -> None:
        """A cell's planned processes, raised as the run learns it needs more (measure/repetitions.py)."""
        with self.transaction() as db:
            db.execute("UPDATE cells SET repetitions = ? WHERE id = ?", (repetitions, cell_id))

    def record_peak(self, run_id: str, peak: Peak, node: str | None = None,
                    machine: dict[str, Any] | None = None) -> None:
        """A peak probe of the run's machine, or of a cluster ``node`` (with that node's ``machine``)."""
        with self.transaction() as db:
            environment_id = (self._environment_id(db, machine) if machine else
                              db.execute("SELECT environment_id FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
            db.execute(
                "INSERT INTO peaks (run_id, environment_id, threads, gflops, matrix_size, library, measured_at, node)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, environment_id, peak.threads, peak.gflops, peak.matrix_size, peak.library, now(), node),
            )

    def record_verification(self, check: dict[str, Any], code_version: str) -> None:
        """One verdict of `dlarena verify` (orchestrate/verify.PairCheck.as_dict)."""
        extra = {key: check.get(key) for key in (
            "forward64_error", "loss64_error", "gradient32_error", "float32_gradients", "kink_margin")}
        data = {"problems": check["problems"], "framework_bugs": check.get("framework_bugs", []), **extra,
                "stderr_tail": check["stderr_tail"][-STDERR_TAIL_CHARS:]}
        self.copy_verification({
            "checked_at": now(), "code_version": code_version, "data": json.dumps(data),
            "precision": check.get("precision", "float32"),  # a verdict of code before bfloat16 was float32's
            **{key: check[key] for key in _VERIFICATION_COLUMNS
               if key not in ("checked_at", "code_version", "data", "precision")},
        })

    def copy_verification(self, row: dict[str, Any]) -> None:
        """Insert a verdict as it is (from another database: the machine's record, store/verdicts.py)."""
        with self.transaction() as db:
            db.execute(f"INSERT INTO verifications ({', '.join(_VERIFICATION_COLUMNS)})"
                       f" VALUES ({', '.join('?' for _ in _VERIFICATION_COLUMNS)})",
                       tuple(row[key] for key in _VERIFICATION_COLUMNS))

    def verification_rows(self, code_version: str) -> list[dict[str, Any]]:
        """Every verdict recorded for dlarena's ``code_version``, oldest first."""
        rows = self.connection.execute(
            f"SELECT {', '.join(_VERIFICATION_COLUMNS)} FROM verifications WHERE code_version = ? ORDER BY id",
            (code_version,)).fetchall()
        return [dict(row) for row in rows]

    def verifications(self, code_version: str) -> list[dict[str, Any]]:
        """Framework, workload, framework version, precision, status and time of each verdict for ``code_version``."""
        rows = self.connection.execute(
            "SELECT framework, workload, framework_version, precision, status, checked_at FROM verifications"
            " WHERE code_version = ? ORDER BY id", (code_version,)).fetchall()
        return [dict(row) for row in rows]

    def record_probe(self, answer: dict[str, Any], code_version: str, environment: dict[str, Any]) -> None:
        """One answer of `dlarena capabilities` (orchestrate/capabilities.ProbeAnswer.as_dict)."""
        with self.transaction() as db:
            environment_id = self._environment_id(db, environment)
            db.execute(
                "INSERT INTO probe_results (checked_at, probe, framework, framework_version, code_version,"
                " environment_id, outcome, message, figures, command, wall_s, stderr_tail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now(), answer["probe"], answer["framework"], answer["framework_version"], code_version,
                 environment_id, answer["outcome"], answer["message"], json.dumps(answer["figures"]),
                 json.dumps(answer["command"]), answer["wall_s"], answer["stderr_tail"][-STDERR_TAIL_CHARS:]))

    def probe_answers(self) -> list[dict[str, Any]]:
        """The latest answer per framework and probe, with the framework version it was asked of."""
        rows = self.connection.execute(
            "SELECT * FROM probe_results WHERE id IN (SELECT MAX(id) FROM probe_results GROUP BY framework, probe)"
            " ORDER BY framework, probe").fetchall()
        return [{**dict(row), "figures": json.loads(row["figures"]), "command": json.loads(row["command"])}
                for row in rows]

    def last_probe_pass(self, framework: str, probe: str) -> dict[str, Any] | None:
        """The latest passing answer of a framework's probe, of any dlarena version (the ecosystem
        probe keeps its figures when the index cannot be read); None if it never passed."""
        row = self.connection.execute(
            "SELECT * FROM probe_results WHERE framework = ? AND probe = ? AND outcome = 'pass'"
            " ORDER BY id DESC LIMIT 1", (framework, probe)).fetchone()
        if row is None:
            return None
        return {**dict(row), "figures": json.loads(row["figures"]), "command": json.loads(row["command"])}

    def verification_statuses(self) -> dict[tuple[str, str, str | None, str], str]:
        """The latest verification status per (framework, workload, framework version, precision)."""
        rows = self.connection.execute(
            "SELECT framework, workload, framework_version, precision, status FROM verifications ORDER BY id"
        ).fetchall()
        return {(row["framework"], row["workload"], row["framework_version"], row["precision"]): row["status"]
                for row in rows}

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, finished_at = NULL WHERE id = ?", (status, run_id))

    def record_resume(self, run_id: str, argv: Sequence[str], changes: Sequence[str]) -> None:
        """Note in the run that it was resumed, by which command, and what had changed by then."""
        with self.transaction() as db:
            row = db.execute("SELECT resumes FROM runs WHERE id = ?", (run_id,)).fetchone()
            resumes = [*json.loads(row[0]), {"at": now(), "argv": list(argv), "changes": list(changes)}]
            db.execute("UPDATE runs SET resumes = ? WHERE id = ?", (json.dumps(resumes), run_id))

    def finish_run(self, run_id: str, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (status, now(), run_id))

    # --- reading ----------------------------------------------------------------------------------

    def run(self, run_id: str | None) -> sqlite3.Row:
        """A run by id, or the latest one (None or 'latest')."""
        if run_id is None or run_id == "latest":
            row = self.connection.execute("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchone()
            if row is None:
                raise StoreError(f"{self.path} holds no run yet; start one with `dlarena run`")
            return row  # type: ignore[no-any-return]
        row = self.connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r["id"] for r in self.connection.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 5")]
            raise StoreError(f"no run {run_id!r} in {self.path}; latest runs: {', '.join(known) or 'none'}")
        return row  # type: ignore[no-any-return]

    def environment(self, environment_id: int) -> dict[str, Any]:
        row = self.connection.execute("SELECT data FROM environments WHERE id = ?", (environment_id,)).fetchone()
        return json.loads(row["data"]) if row else {}

    def run_nodes(self, run_id: str) -> list[dict[str, Any]]:
        """The cluster nodes a run's processes ran on: each node's name, its machine's snapshot (one per
        machine it was seen as) and how many processes it ran; empty for a local run."""
        rows = self.connection.execute(
            "SELECT r.node, e.data AS machine, COUNT(*) AS processes FROM results r JOIN cells c ON c.id = r.cell_id"
            " LEFT JOIN environments e ON e.id = r.environment_id WHERE c.run_id = ? AND r.node IS NOT NULL"
            " GROUP BY r.node, r.environment_id ORDER BY r.node",
            (run_id,),
        ).fetchall()
        return [{"node": row["node"], "machine": json.loads(row["machine"]) if row["machine"] else {},
                 "processes": row["processes"]} for row in rows]

    def cell_rows(self, run_id: str) -> list[dict[str, Any]]:
        """One row per cell of a run with its summary and its result (status 'pending' if none).

        With several processes per cell, the result shown is the latest that was not ok, if any: one
        failed repetition makes the cell's figures incomplete, and the reader must see why. An
        interrupted process shows only while nothing has run since (a resume runs it again).
        """
        rows = self.connection.execute(
            """
            SELECT c.id AS cell_id, c.run_id, c.position, c.cell_key, c.framework, c.workload, c.scenario,
                   c.device, c.batch_size, c.threads, c.precision, c.config,
                   COALESCE(r.status, 'pending') AS status, COALESCE(r.message, '') AS message,
                   r.repetition, r.stderr_tail, r.command, r.framework_version, r.params, r.flops_per_step,
                   r.wall_s, r.parity, COALESCE(c.node, r.node) AS node,
                   json_extract(r.data, '$.data_parallel') AS data_parallel,
                   COALESCE(json_extract(c.config, '$.replicas'), 1) AS replicas,
                   (SELECT COUNT(DISTINCT node) FROM results WHERE cell_id = c.id) AS nodes_run,
                   (SELECT COUNT(*) FROM results WHERE cell_id = c.id) AS processes_run,
                   s.n, s.processes, s.median_s, s.mean_s, s.stdev_s, s.min_s, s.max_s, s.q1_s, s.q3_s,
                   s.q3_s - s.q1_s AS iqr_s, s.ci_low_s, s.ci_high_s, s.p50_s, s.p90_s, s.p99_s,
                   s.process_spread, s.throughput, s.gflops, s.peak_gflops, s.peak_percent,
                   COALESCE(s.import_s, r.import_s) AS import_s, COALESCE(s.build_s, r.build_s) AS build_s,
                   COALESCE(s.first_step_s, r.first_step_s) AS first_step_s,
                   COALESCE(s.cores_used, r.cores_used) AS cores_used, s.cpu_utilisation,
                   COALESCE(s.peak_rss_bytes, r.peak_rss_bytes) AS peak_rss_bytes,
                   s.memory_growth_bytes, COALESCE(s.warnings, '[]') AS warnings,
                   COALESCE(s.data, '{}') AS summary_data, s.accuracy, s.time_to_target_s
            FROM cells c
            LEFT JOIN results r ON r.id = (
                SELECT id FROM results WHERE cell_id = c.id
                ORDER BY status = 'interrupted', status = 'ok', id DESC LIMIT 1)
            LEFT JOIN summaries s ON s.cell_id = c.id
            WHERE c.run_id = ?
            ORDER BY c.position
            """,
            (run_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def run_cells(self, run_id: str) -> list[dict[str, Any]]:
        """A run's cells with their processes: planned (``repetitions``), ok, finished (every stored
        process but an interrupted one), the latest one's status, and the final status with its
        message, if the cell has one.

        Every status but ok and interrupted is final: a resumed run does not run that cell again.
        """
        rows = self.connection.execute(
            """
            SELECT c.id AS cell_id, c.config, c.cell_key, c.timeout_s, c.framework, c.workload,
                   COALESCE(c.repetitions, runs.repetitions) AS repetitions,
                   (SELECT COUNT(*) FROM results WHERE cell_id = c.id AND status = 'ok') AS ok,
                   (SELECT COUNT(*) FROM results WHERE cell_id = c.id AND status != 'interrupted') AS finished,
                   (SELECT status FROM results WHERE cell_id = c.id ORDER BY id DESC LIMIT 1) AS latest_status,
                   f.status AS final_status, f.message AS final_message
            FROM cells c JOIN runs ON runs.id = c.run_id
            LEFT JOIN results f ON f.id = (
                SELECT id FROM results WHERE cell_id = c.id AND status NOT IN ('ok', 'interrupted')
                ORDER BY id LIMIT 1)
            WHERE c.run_id = ? ORDER BY c.position
            """,
            (run_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def cell_counts(self, run_id: str) -> dict[str, int]:
        """How many cells of a run are in each state (``cell_state``)."""
        counts: dict[str, int] = {}
        for cell in self.run_cells(run_id):
            state = cell_state(cell)
            counts[state] = counts.get(state, 0) + 1
        return counts

    def process_counts(self, run_id: str) -> tuple[int, int]:
        """Worker processes of a run: finished so far, and planned in all (a cell whose process was
        not ok runs no more, so its planned count is what it ran)."""
        cells = self.run_cells(run_id)
        finished = sum(cell["finished"] for cell in cells)
        planned = sum(cell["finished"] if cell["final_status"] else max(cell["repetitions"], cell["ok"])
                      for cell in cells)
        return finished, planned

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the database, oldest first, with its cells counted by state and its processes."""
        rows = self.connection.execute(
            "SELECT id, suite_name, suite_version, started_at, finished_at, status, repetitions, argv, resumes"
            " FROM runs ORDER BY started_at, rowid"
        ).fetchall()
        listing = []
        for row in rows:
            finished, planned = self.process_counts(row["id"])
            listing.append({
                "id": row["id"], "suite": row["suite_name"], "suite_version": row["suite_version"],
                "started_at": row["started_at"], "finished_at": row["finished_at"], "status": row["status"],
                "cells": self.cell_counts(row["id"]), "processes_finished": finished, "processes_planned": planned,
                "resumes": len(json.loads(row["resumes"])), "command": json.loads(row["argv"]),
            })
        return listing

    def samples(self, cell_id: int, phase: str = "steady") -> list[float]:
        return [value for group in self.samples_by_process(cell_id, phase) for value in group]

    def samples_by_process(self, cell_id: int, phase: str = "steady") -> list[list[float]]:
        """A cell's samples of ``phase``, one list per ok worker process, in the order they ran."""
        rows = self.connection.execute(
            "SELECT r.id, s.seconds FROM samples s JOIN results r ON r.id = s.result_id"
            " WHERE r.cell_id = ? AND s.phase = ? AND r.status = 'ok' ORDER BY r.id, s.step",
            (cell_id, phase),
        ).fetchall()
        groups: dict[int, list[float]] = {}
        for row in rows:
            groups.setdefault(int(row[0]), []).append(float(row[1]))
        return list(groups.values())

    def canary_readings(self, run_id: str) -> list[dict[str, Any]]:
        """The canary's judgement of each ok process of a run (measure/canary.py), in the order they ran,
        with the process's cell and start: the machine's speed over the run."""
        rows = self.connection.execute(
            "SELECT c.framework, c.workload, c.scenario, c.threads, r.repetition, r.started_at,"
            " json_extract(r.data, '$.canary') AS canary FROM results r JOIN cells c ON c.id = r.cell_id"
            " WHERE c.run_id = ? AND r.status = 'ok' AND json_extract(r.data, '$.canary') IS NOT NULL"
            " ORDER BY r.id", (run_id,),
        ).fetchall()
        return [{**{key: row[key] for key in ("framework", "workload", "scenario", "threads", "repetition",
                                              "started_at")}, **json.loads(row["canary"])} for row in rows]

    def ok_processes(self, cell_id: int) -> list[dict[str, Any]]:
        """The worker results of a cell's ok processes, as the worker wrote them: the JSON with its
        step times put back from the samples table (where alone they are stored)."""
        rows = self.connection.execute(
            "SELECT id, data FROM results WHERE cell_id = ? AND status = 'ok' ORDER BY id", (cell_id,)
        ).fetchall()
        processes = {int(row["id"]): json.loads(row["data"]) for row in rows}
        for process in processes.values():
            process.update({key: [] for key in SAMPLE_KEYS})
        for row in self.connection.execute(
            "SELECT s.result_id, s.phase, s.seconds FROM samples s JOIN results r ON r.id = s.result_id"
            " WHERE r.cell_id = ? AND r.status = 'ok' AND s.phase IN ('warmup', 'steady')"
            " ORDER BY s.result_id, s.phase, s.step", (cell_id,),
        ):
            key = "samples_s" if row["phase"] == "steady" else "warmup_s"
            processes[int(row["result_id"])][key].append(float(row["seconds"]))
        return list(processes.values())

    def peaks(self, run_id: str, node: str | None = None) -> dict[int, dict[str, Any]]:
        """The peak probes of a run's machine (or of its cluster ``node``), by thread count."""
        rows = self.connection.execute(
            "SELECT threads, gflops, matrix_size, library, run_id FROM peaks WHERE run_id = ? AND node IS ?"
            " ORDER BY id", (run_id, node),
        ).fetchall()
        return {int(row["threads"]): dict(row) for row in rows}


def cell_state(cell: dict[str, Any]) -> str:
    """A cell's state in a run, from a ``Store.run_cells`` row: its final status if a process ended
    so; ``ok`` once every planned process is ok; else ``interrupted`` if its latest process was cut
    by Ctrl-C, or ``pending`` (processes not yet run)."""
    if cell["final_status"]:
        return str(cell["final_status"])
    if cell["ok"] >= cell["repetitions"]:
        return "ok"
    return "interrupted" if cell["latest_status"] == "interrupted" else "pending"


def check_location(path: Path) -> None:
    """Raise StoreError, writing nothing, if a database could not be created or written at ``path``.

    A run calls this before it waits for the machine and creates the file only once it starts, so
    that a refused or abandoned run leaves no empty database (nor a mistyped folder) behind.
    """
    if path.is_dir():
        raise StoreError(f"the database path {path} is a folder; give a file path with --db")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise StoreError(f"cannot write the database {path}: permission denied; choose another --db")
        return
    folder = path.absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StoreError(f"cannot create the database folder {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder:
            raise StoreError(f"cannot write the database {path}: its folder is not writable; choose another --db")
        raise StoreError(f"cannot create the database folder {folder}: {existing} is not writable;"
                         " choose another --db")


def _check_writable_location(path: Path) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the database folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise StoreError(f"cannot write the database {path}: its folder is not writable")


def _schema_version(connection: sqlite3.Connection, path: Path) -> int:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "meta" not in tables:
        raise StoreError(f"{path} is an SQLite database but not one of dlarena's; choose another --db")
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(connection: sqlite3.Connection, version: int) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[step]):
                connection.execute(statement)
        connection.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit the transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines():
        buffer += line.split("--", 1)[0] + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [statement for statement in statements if statement]
