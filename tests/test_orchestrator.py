"""Whole sweeps through real worker processes, with the test-only fault frameworks (NumPy only)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli
from dlarena.orchestrate.orchestrator import run_suite
from dlarena.plan.suite import parse_suite
from dlarena.store.database import Store

FAST = "[measurement]\nwarmup_steps = 1\nmin_steps = 5\nmin_time_s = 0.05\n"


def _suite(frameworks: list[str], timeout_s: float = 60, threads: str = "[1]") -> str:
    names = ", ".join(f'"{name}"' for name in frameworks)
    return (f'name = "faults"\nframeworks = [{names}]\nworkloads = ["fcn5-small"]\nscenarios = ["train"]\n'
            f"threads = {threads}\nbatch_sizes = [4]\ntimeout_s = {timeout_s}\n{FAST}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_every_fault_gets_its_status_and_ok_cells_around_them_are_measured(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "children.txt"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    frameworks = ["fault-none", "fault-raise", "fault-none", "fault-segfault", "fault-exit", "fault-hang",
                  "fault-unsupported", "fault-unavailable", "fault-grow", "fault-oom-error"]
    suite = parse_suite("memory_limit_gib = 0.5\n" + _suite(frameworks, timeout_s=10), "faults")
    store = Store.open(db_path)
    summary = run_suite(suite, store, ["test"])
    rows = {row["framework"]: row for row in store.cell_rows(summary.run_id)}
    assert len(rows) == 9  # the repeated fault-none is one cell

    ok = rows["fault-none"]
    assert ok["status"] == "ok" and ok["n"] >= 5 and ok["median_s"] > 0
    assert len(store.samples(ok["cell_id"])) == ok["n"]
    assert ok["params"] == 64 * 64 and ok["import_s"] is not None and ok["first_step_s"] is not None

    assert rows["fault-raise"]["status"] == "failed"
    assert "RuntimeError: injected failure" in rows["fault-raise"]["message"]
    assert "Traceback" in rows["fault-raise"]["stderr_tail"]
    assert (rows["fault-segfault"]["status"], rows["fault-segfault"]["message"]) == (
        "failed", "the worker was killed by SIGSEGV")
    assert rows["fault-exit"]["status"] == "failed" and "exited with code 3" in rows["fault-exit"]["message"]
    assert rows["fault-hang"]["status"] == "timeout" and "10 s" in rows["fault-hang"]["message"]
    assert rows["fault-unsupported"]["status"] == "unsupported"
    assert rows["fault-unavailable"]["status"] == "unavailable"
    # past its memory limit a worker is killed by dlarena, with the peak reached
    grow = rows["fault-grow"]
    assert grow["status"] == "oom" and "over the cell's limit of 512.0 MiB" in grow["message"]
    # a framework's own out-of-memory error is oom too
    assert rows["fault-oom-error"]["status"] == "oom" and "CUDA out of memory" in rows["fault-oom-error"]["message"]
    assert ok["processes"] == 3 and ok["processes_run"] == 3  # faulty cells ran once, the healthy one k times
    assert rows["fault-raise"]["processes_run"] == 1
    assert summary.counts == {"ok": 1, "failed": 3, "timeout": 1, "unsupported": 1, "unavailable": 1, "oom": 2}
    assert store.run(summary.run_id)["status"] == "finished"

    # the hung worker's own child died with it: the whole process group was killed
    children = [int(pid) for pid in pidfile.read_text().split()]
    assert children
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def test_stored_command_reruns_the_cell_by_hand(db_path: Path) -> None:
    store = Store.open(db_path)
    summary = run_suite(parse_suite(_suite(["fault-none"]), "t"), store, ["test"])
    (row,) = store.cell_rows(summary.run_id)
    command = json.loads(row["command"])
    assert command[1:3] == ["-m", "dlarena.worker"]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(rerun.stdout)
    assert result["status"] == "ok" and result["cell"] == json.loads(row["config"])


def test_worker_is_pinned_to_as_many_cores_as_threads(db_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    store = Store.open(db_path)
    summary = run_suite(parse_suite(_suite(["fault-none"], threads="[1, 2]"), "t"), store, ["test"])
    rows = store.cell_rows(summary.run_id)
    affinity = {row["threads"]: json.loads(
        store.connection.execute("SELECT data FROM results WHERE cell_id = ?", (row["cell_id"],)).fetchone()[0]
    )["affinity"] for row in rows}
    assert len(affinity[1]) == 1 and len(affinity[2]) == 2


def _start_run(suite_path: Path, db_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite_path), "--db", str(db_path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def _run_until_the_hang_starts(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, suite_text: str, *extra: str
) -> tuple[subprocess.Popen[str], Path]:
    """Start `dlarena run` on a suite with a fault-hang cell; return once that cell's child is running."""
    pidfile = tmp_path / "children.txt"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    suite_path = tmp_path / "s.toml"
    suite_path.write_text(suite_text)
    process = _start_run(suite_path, db_path, *extra)
    try:
        _wait_for(pidfile)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, pidfile


def test_each_result_is_in_the_database_before_the_next_cell_starts(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the orchestrator while its second cell runs: the first cell's result is there, intact."""
    process, pidfile = _run_until_the_hang_starts(
        tmp_path, db_path, monkeypatch, _suite(["fault-none", "fault-hang"], timeout_s=120), "--quiet")
    process.kill()
    process.wait()
    for pid in pidfile.read_text().split():
        subprocess.run(["kill", "-9", pid], check=False)
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = connection.execute(
        "SELECT c.framework, r.status FROM cells c LEFT JOIN results r ON r.cell_id = c.id ORDER BY c.position"
    ).fetchall()
    assert rows == [("fault-none", "ok"), ("fault-hang", None)]
    assert connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= 5


def _results(db_path: Path) -> list[tuple[str, int, str, int]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(
            "SELECT c.framework, r.repetition, r.status, r.id FROM results r JOIN cells c ON c.id = r.cell_id"
            " ORDER BY r.id"
        ).fetchall()


def test_a_killed_run_resumes_where_it_stopped_without_duplicating_or_changing_results(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    """kill -9 the orchestrator in the middle of a cell, then `run --resume`: each process runs exactly once."""
    suite_text = "repetitions = 2\n" + _suite(["fault-none", "fault-hang", "fault-wrong"], timeout_s=4)
    # once the hang cell has started, fault-none's first process is stored
    process, _ = _run_until_the_hang_starts(tmp_path, db_path, monkeypatch, suite_text, "--quiet")
    process.kill()
    process.wait()
    before = _results(db_path)
    assert [(framework, repetition, status) for framework, repetition, status, _ in before] == [
        ("fault-none", 0, "ok")]
    with sqlite3.connect(db_path) as connection:
        stored_before = connection.execute("SELECT * FROM results").fetchall()

    resumed = cli("run", "--resume", "--db", str(db_path), timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 processes stored before" in resumed.stderr
    after = _results(db_path)
    assert after[0] == before[0]
    assert sorted((framework, repetition, status) for framework, repetition, status, _ in after) == [
        ("fault-hang", 0, "timeout"), ("fault-none", 0, "ok"), ("fault-none", 1, "ok"),
        ("fault-wrong", 0, "ok"), ("fault-wrong", 1, "ok"),
    ]
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT * FROM results WHERE id = ?", (before[0][3],)).fetchall() == stored_before
        status, resumes = connection.execute("SELECT status, resumes FROM runs").fetchone()
    assert status == "finished" and len(json.loads(resumes)) == 1
    again = cli("run", "--resume", "--db", str(db_path))
    assert again.returncode == 0 and _results(db_path) == after  # nothing left to run, nothing duplicated


def test_ctrl_c_marks_the_running_cell_interrupted_and_says_how_to_resume(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    suite_text = "repetitions = 1\n" + _suite(["fault-none", "fault-hang"], timeout_s=3)
    process, pidfile = _run_until_the_hang_starts(tmp_path, db_path, monkeypatch, suite_text)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted" in stderr and "dlarena run --resume" in stderr and "Traceback" not in stderr
    for pid in pidfile.read_text().split():  # the hang cell's child went down with it
        assert not _alive(int(pid))
    assert [(framework, status) for framework, _, status, _ in _results(db_path)] == [
        ("fault-none", "ok"), ("fault-hang", "interrupted")]
    report = cli("report", "--db", str(db_path)).stdout
    assert "| fault-hang | *interrupted* |" in report
    resumed = cli("run", "--resume", "--db", str(db_path), timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert [(framework, status) for framework, _, status, _ in _results(db_path)] == [
        ("fault-none", "ok"), ("fault-hang", "interrupted"), ("fault-hang", "timeout")]
    assert "| fault-hang | *timeout* |" in cli("report", "--db", str(db_path)).stdout


def test_a_second_run_waits_for_the_first_or_refuses_naming_it(db_path: Path, tmp_path: Path, cli: Cli) -> None:
    pidfile = tmp_path / "children.txt"
    suite_path = tmp_path / "s.toml"
    suite_path.write_text("repetitions = 1\n" + _suite(["fault-hang"], timeout_s=4))
    first = subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite_path), "--db", str(db_path), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DLARENA_FAULT_PIDFILE": str(pidfile)},
    )
    try:
        _wait_for(pidfile)
        other_db = str(tmp_path / "other.db")
        refused = cli("run", "--frameworks", "fault-none", "--workloads", "fcn5-small", "--threads", "1",
                      "--no-wait", "--db", other_db)
        assert refused.returncode == 2 and "is measuring on this machine" in refused.stderr
        assert f"pid {first.pid}" in refused.stderr and "Traceback" not in refused.stderr
        assert not Path(other_db).exists() or not _results(Path(other_db))
        # reading the database being written works meanwhile
        assert cli("report", "--db", str(db_path)).returncode == 0
        waited = cli("run", "--frameworks", "fault-none", "--workloads", "fcn5-small", "--threads", "1",
                     "--scenarios", "train", "--repetitions", "1", "--db", other_db)
        assert waited.returncode == 0, waited.stderr
        assert "waiting for run" in waited.stderr
        assert first.poll() is not None  # it only started once the first had finished
    finally:
        first.kill()
        first.wait()


def test_resume_refuses_when_dlarena_changed_unless_allowed(db_path: Path, tmp_path: Path, cli: Cli) -> None:
    suite_path = tmp_path / "s.toml"
    suite_path.write_text("repetitions = 2\n" + _suite(["fault-none"]))
    assert cli("run", "--suite", str(suite_path), "--db", str(db_path), "--quiet").returncode == 0
    with sqlite3.connect(db_path) as connection:  # as if the run had been started by another dlarena
        connection.execute("UPDATE runs SET code_version = '0.0.1+gold'")
        connection.execute("DELETE FROM samples WHERE result_id IN (SELECT id FROM results WHERE repetition = 1)")
        connection.execute("DELETE FROM results WHERE repetition = 1")
    refused = cli("run", "--resume", "--db", str(db_path))
    assert refused.returncode == 2 and "dlarena was 0.0.1+gold and is now" in refused.stderr
    assert "--allow-changes" in refused.stderr and len(_results(db_path)) == 1
    allowed = cli("run", "--resume", "--allow-changes", "--db", str(db_path))
    assert allowed.returncode == 0, allowed.stderr
    with sqlite3.connect(db_path) as connection:
        [resume] = json.loads(connection.execute("SELECT resumes FROM runs").fetchone()[0])
    assert resume["changes"][0].startswith("dlarena was 0.0.1+gold") and len(_results(db_path)) == 2
    mixed = cli("run", "--resume", "--frameworks", "torch", "--db", str(db_path))
    assert mixed.returncode == 2 and "takes no --frameworks" in mixed.stderr
