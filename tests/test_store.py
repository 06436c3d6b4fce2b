"""The SQLite store: schema versioning, refusal of foreign files, what a recorded result leaves behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dlarena.measure.aggregate import aggregate
from dlarena.plan.cell import Cell
from dlarena.store.database import PlannedCell, Store, StoredResult, StoreError, cell_state, check_location
from dlarena.store.schema import SCHEMA_VERSION

ENVIRONMENT = {"cpu_model": "test cpu", "cores": 2, "memory_bytes": 1 << 30, "os": "Linux", "python": "3.11"}


def _start(store: Store, cells: list[Cell]) -> tuple[str, list[int]]:
    planned = [PlannedCell(cell, 60.0, f"key{index}") for index, cell in enumerate(cells)]
    return store.start_run(ENVIRONMENT, "quick", 1, "name = 'quick'", ["dlarena", "run"], "0.1.0", planned)


def _result(status: str, samples: list[float] | None = None, repetition: int = 0) -> StoredResult:
    data = {"status": status, "first_step_s": 0.5, "warmup_s": [0.2], "samples_s": samples or [],
            "flops_per_step": 2e9, "params": 10, "parity": {"threads": 1}, "import_s": 1.0 + repetition,
            "build_s": 0.1, "cores_used": 0.9, "peak_rss_bytes": 1000 * (1 + repetition),
            "resources": {"memory_growth_bytes": 10 * repetition}}
    return StoredResult(
        status=status, message="" if status == "ok" else "boom", stderr_tail="trace" * 2000,
        command=["python", "-m", "dlarena.worker"], exit_code=0, wall_s=1.0, started_at="t0",
        finished_at="t1", data=data, repetition=repetition,
    )


def test_new_database_has_the_current_schema_and_wal(db_path: Path) -> None:
    store = Store.open(db_path)
    version = store.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    Store.open(db_path).close()  # reopening migrates nothing and keeps the data


def test_result_samples_and_summary_are_stored(db_path: Path) -> None:
    store = Store.open(db_path)
    cells = [Cell("torch", "fcn5-small", "train", 32, 1), Cell("torch", "fcn5-small", "train", 32, 2)]
    run_id, cell_ids = _start(store, cells)
    store.record_result(cell_ids[0], _result("ok", [0.1, 0.2, 0.3, 0.4]))
    store.record_result(cell_ids[0], _result("ok", [0.3, 0.5], repetition=1))
    figures = aggregate(store.ok_processes(cell_ids[0]), batch_size=32, threads=1, peak_gflops=40.0)
    store.record_summary(cell_ids[0], figures)
    rows = store.cell_rows(run_id)
    assert [row["status"] for row in rows] == ["ok", "pending"]
    assert rows[0]["median_s"] == pytest.approx(0.3) and rows[0]["processes"] == 2 and rows[0]["n"] == 6
    assert rows[0]["ci_low_s"] <= rows[0]["median_s"] <= rows[0]["ci_high_s"]
    assert rows[0]["throughput"] == pytest.approx(32 / 0.3)
    assert rows[0]["gflops"] == pytest.approx(2e9 / 0.3 / 1e9)
    assert rows[0]["peak_percent"] == pytest.approx(100 * 2e9 / 0.3 / 1e9 / 40.0)
    # one-off costs are medians over processes, memory is the worst process
    assert rows[0]["import_s"] == pytest.approx(1.5) and rows[0]["peak_rss_bytes"] == 2000
    assert rows[0]["memory_growth_bytes"] == 10 and rows[0]["cpu_utilisation"] == pytest.approx(0.9)
    assert store.samples_by_process(cell_ids[0]) == [[0.1, 0.2, 0.3, 0.4], [0.3, 0.5]]
    assert store.samples(cell_ids[0], "first") == [0.5, 0.5]
    assert store.samples(cell_ids[0], "warmup") == [0.2, 0.2]
    # step times are stored once (the samples table), and the processes read back as the worker wrote them
    stored_json = [row[0] for row in store.connection.execute("SELECT data FROM results WHERE cell_id = ?",
                                                             (cell_ids[0],))]
    assert all("samples_s" not in text and "warmup_s" not in text for text in stored_json)
    assert [process["samples_s"] for process in store.ok_processes(cell_ids[0])] == [[0.1, 0.2, 0.3, 0.4], [0.3, 0.5]]
    assert [process["warmup_s"] for process in store.ok_processes(cell_ids[0])] == [[0.2], [0.2]]
    store.record_result(cell_ids[1], _result("ok", [0.1]))
    store.record_result(cell_ids[1], _result("failed", repetition=1))
    failed = store.cell_rows(run_id)[1]
    # a cell with one failed process shows the failure, not the figures of its other processes alone
    assert failed["status"] == "failed" and failed["message"] == "boom" and failed["repetition"] == 1
    assert len(failed["stderr_tail"]) <= 4000
    store.finish_run(run_id, "finished")
    assert store.run(None)["status"] == "finished"
    assert store.environment(store.run(run_id)["environment_id"])["cpu_model"] == "test cpu"
    store.close()


def test_environment_is_stored_once_per_fingerprint(db_path: Path) -> None:
    store = Store.open(db_path)
    _start(store, [Cell("torch", "fcn5-small", "train", 32, 1)])
    _start(store, [Cell("torch", "fcn5-small", "train", 32, 1)])
    assert store.connection.execute("SELECT COUNT(*) FROM environments").fetchone()[0] == 1
    assert store.connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_a_failed_write_leaves_nothing_half_written(db_path: Path) -> None:
    store = Store.open(db_path)
    _, cell_ids = _start(store, [Cell("torch", "fcn5-small", "train", 32, 1)])
    bad = _result("ok", [0.1, 0.2])
    bad.data["samples_s"] = [0.1, [1, 2]]  # valid JSON, but SQLite cannot bind it: fails mid-transaction
    with pytest.raises(sqlite3.Error):
        store.record_result(cell_ids[0], bad)
    assert store.connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    assert store.connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match="is not a dlarena results database"):
        Store.open(path)
    assert path.read_text().startswith("these are my notes")


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not one of dlarena's"):
        Store.open(path)


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    connection = sqlite3.connect(db_path)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="written by a newer dlarena"):
        Store.open(db_path)


def test_reading_a_missing_database_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError, match="there is no results database"):
        Store.open(path, create=False)
    assert not path.exists()


def test_a_database_location_is_checked_without_writing_anything(tmp_path: Path) -> None:
    check_location(tmp_path / "not" / "yet" / "there.db")  # a run creates the folders once it starts
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"cannot create the database folder .*file/sub: .*file is not a folder"):
        check_location(tmp_path / "file" / "sub" / "r.db")
    with pytest.raises(StoreError, match="is a folder; give a file path with --db"):
        check_location(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


def test_each_cell_has_one_state_and_runs_lists_them_by_state(db_path: Path) -> None:
    """Final status, ok once every process is, interrupted, pending: counted apart (issue 12: a cell
    with processes still to run was counted ok)."""
    store = Store.open(db_path)
    cells = [Cell("torch", "fcn5-small", "train", 32, threads) for threads in (1, 2, 3, 4)]
    planned = [PlannedCell(cell, 60.0, f"key{index}", repetitions=2) for index, cell in enumerate(cells)]
    run_id, ids = store.start_run(ENVIRONMENT, "quick", 3, "", ["dlarena", "run"], "0.1.0", planned, 2)
    store.record_result(ids[0], _result("ok", [0.1]))
    store.record_result(ids[0], _result("ok", [0.1], repetition=1))
    store.record_result(ids[1], _result("failed"))
    store.record_result(ids[2], _result("ok", [0.1]))
    store.record_result(ids[2], _result("interrupted", repetition=1))
    store.record_result(ids[3], _result("ok", [0.1]))
    assert [cell_state(cell) for cell in store.run_cells(run_id)] == ["ok", "failed", "interrupted", "pending"]
    assert store.cell_counts(run_id) == {"ok": 1, "failed": 1, "interrupted": 1, "pending": 1}
    # finished: 2 + 1 + 1 + 1 (an interrupted process is not); planned: 2 + 1 (failed: no more) + 2 + 2
    assert store.process_counts(run_id) == (5, 7)
    (listed,) = store.runs()
    assert listed["id"] == run_id and listed["status"] == "running" and listed["suite_version"] == 3
    assert (listed["processes_finished"], listed["processes_planned"]) == (5, 7)
    assert listed["cells"] == store.cell_counts(run_id) and listed["command"] == ["dlarena", "run"]


def test_unknown_run_lists_recent_ones(db_path: Path) -> None:
    store = Store.open(db_path)
    with pytest.raises(StoreError, match="holds no run yet"):
        store.run(None)
    run_id, _ = _start(store, [Cell("torch", "fcn5-small", "train", 32, 1)])
    with pytest.raises(StoreError, match=run_id):
        store.run("nope")


def test_an_older_schema_is_migrated_in_place_keeping_its_data(db_path: Path) -> None:
    from dlarena.store.database import _statements
    from dlarena.store.schema import MIGRATIONS

    connection = sqlite3.connect(db_path)
    for statement in _statements(MIGRATIONS[0]):
        connection.execute(statement)
    connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    connection.execute("INSERT INTO environments (fingerprint, cpu_model, cores, memory_bytes, os, python, data)"
                       " VALUES ('f', 'old cpu', 1, 1, 'Linux', '3.11', '{}')")
    # a finished v1 run: one process per cell, a summary without interval or costs
    connection.execute("INSERT INTO runs (id, started_at, status, suite_name, suite_version, suite_source, argv,"
                       " code_version, environment_id) VALUES ('old', 't', 'finished', 'quick', 1, '', '[]', '0', 1)")
    connection.execute("INSERT INTO cells (run_id, position, cell_key, framework, workload, scenario, device,"
                       " batch_size, threads, precision, timeout_s, config) VALUES ('old', 0, 'k', 'torch',"
                       " 'fcn5-small', 'train', 'cpu', 32, 1, 'float32', 60, '{}')")
    connection.execute("INSERT INTO results (cell_id, status, message, stderr_tail, command, wall_s, started_at,"
                       " finished_at, parity, data, import_s)"
                       " VALUES (1, 'ok', '', '', '[]', 1, 't', 't', '{}', '{}', 2.0)")
    connection.execute("INSERT INTO summaries (cell_id, n, median_s, mean_s, stdev_s, min_s, max_s, q1_s, q3_s,"
                       " throughput) VALUES (1, 10, 0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5, 64)")
    connection.commit()
    connection.close()
    store = Store.open(db_path)
    assert store.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION)
    assert store.connection.execute("SELECT cpu_model FROM environments").fetchone()[0] == "old cpu"
    assert store.verification_statuses() == {}
    [row] = store.cell_rows("old")
    assert row["status"] == "ok" and row["median_s"] == 0.5 and row["processes"] == 1 and row["repetition"] == 0
    assert row["import_s"] == 2.0 and row["warnings"] == "[]" and row["ci_low_s"] is None
    assert store.run("old")["repetitions"] == 1 and store.peaks("old") == {}


def test_a_full_disk_is_one_sentence_and_leaves_the_database_as_it_was(db_path: Path) -> None:
    store = Store.open(db_path)
    _, cell_ids = _start(store, [Cell("torch", "fcn5-small", "train", 32, 1)])
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
    with pytest.raises(StoreError, match="database or disk is full; nothing of this write was kept"):
        store.record_result(cell_ids[0], _result("ok", [0.1] * 5000))
    assert store.connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    assert store.connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0
    assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
