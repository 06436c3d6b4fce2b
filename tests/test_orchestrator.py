"""Whole sweeps through real worker processes, with the test-only fault frameworks (NumPy only)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dlarena.orchestrate.orchestrator import run_suite
from dlarena.plan.suite import parse_suite
from dlarena.store.database import Store

FAST = "[measurement]\nwarmup_steps = 1\nmin_steps = 5\nmin_time_s = 0.05\n"
# The limit of a cell that ends by itself (ok, or any fault but a hang): it only bounds a bug, so it
# is far beyond what a worker takes on a busy machine (a fault-none worker: about 1 s).
GENEROUS_TIMEOUT_S = 600
# The limit of a fault-hang cell where the test needs its child (pidfile): the one timeout a test
# waits out on purpose. Its worker reaches the hang 0.2 s after it starts on the project's idle 2-core
# VM and 0.3 s with both cores held by busy loops; 10 s leaves 30 times that.
HANG_TIMEOUT_S = 10
# A fault-hang cell whose status is all that matters: it is `timeout` however slow the machine.
SHORT_HANG_TIMEOUT_S = 2
# Bound on waiting for a state (a file, a line, a dead process): only reached when the test fails.
STATE_WAIT_S = 120


def _suite(frameworks: list[str], timeout_s: float = GENEROUS_TIMEOUT_S, threads: str = "[1]") -> str:
    names = ", ".join(f'"{name}"' for name in frameworks)
    # target_ci = 0: each cell's pilot only, so that the tests know how many processes run.
    return (f'name = "faults"\nframeworks = [{names}]\nworkloads = ["fcn5-small"]\nscenarios = ["train"]\n'
            f"threads = {threads}\nbatch_sizes = [4]\ntimeout_s = {timeout_s}\ntarget_ci = 0\n{FAST}")


def _and_a_hang(suite_text: str, timeout_s: float) -> str:
    """``suite_text``'s cells (an empty sweep inherits them all), then a fault-hang cell with its own limit."""
    return f'{suite_text}[[sweep]]\n[[sweep]]\nframeworks = ["fault-hang"]\ntimeout_s = {timeout_s}\n'


def _until(condition: Callable[[], bool], what: str, seconds: float = STATE_WAIT_S) -> None:
    """Wait for a state, not for a time: return as soon as ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.05)


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
    frameworks = ["fault-none", "fault-raise", "fault-none", "fault-segfault", "fault-exit",
                  "fault-unsupported", "fault-unavailable", "fault-grow", "fault-oom-error"]
    suite = parse_suite(_and_a_hang("memory_limit_gib = 0.5\n" + _suite(frameworks), HANG_TIMEOUT_S), "faults")
    store = Store.open(db_path)
    summary = run_suite(suite, store, ["test"])
    rows = {row["framework"]: row for row in store.cell_rows(summary.run_id)}
    assert len(rows) == 9  # the repeated fault-none is one cell

    ok = rows["fault-none"]
    assert ok["status"] == "ok" and ok["n"] >= 5 and ok["median_s"] > 0
    assert len(store.samples(ok["cell_id"])) >= ok["n"]  # every step stored; the summary pools the steady ones
    assert ok["params"] == 64 * 64 and ok["import_s"] is not None and ok["first_step_s"] is not None

    assert rows["fault-raise"]["status"] == "failed"
    assert "RuntimeError: injected failure" in rows["fault-raise"]["message"]
    assert "Traceback" in rows["fault-raise"]["stderr_tail"]
    assert (rows["fault-segfault"]["status"], rows["fault-segfault"]["message"]) == (
        "failed", "the worker was killed by SIGSEGV")
    assert rows["fault-exit"]["status"] == "failed" and "exited with code 3" in rows["fault-exit"]["message"]
    assert rows["fault-hang"]["status"] == "timeout" and f"{HANG_TIMEOUT_S} s" in rows["fault-hang"]["message"]
    assert rows["fault-unsupported"]["status"] == "unsupported"
    assert rows["fault-unavailable"]["status"] == "unavailable"
    # past its memory limit a worker is killed by dlarena, with the peak reached
    grow = rows["fault-grow"]
    assert grow["status"] == "oom" and "over the cell's limit of 512.0 MiB" in grow["message"]
    # a framework's own out-of-memory error is oom too
    assert rows["fault-oom-error"]["status"] == "oom" and "CUDA out of memory" in rows["fault-oom-error"]["message"]
    # faulty cells ran once, the healthy one k times (its figures use those that reached a steady state)
    assert ok["processes_run"] == 3 and 1 <= ok["processes"] <= 3
    assert rows["fault-raise"]["processes_run"] == 1
    assert summary.counts == {"ok": 1, "failed": 3, "timeout": 1, "unsupported": 1, "unavailable": 1, "oom": 2}
    assert store.run(summary.run_id)["status"] == "finished"

    # the hung worker's own child died with it: the whole process group was killed
    children = [int(pid) for pid in pidfile.read_text().split()]
    assert children
    _until(lambda: not any(_alive(pid) for pid in children), "the hung worker's children dying")


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


def _start_run(suite_path: Path, db_path: Path, *extra: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite_path), "--db", str(db_path), *extra],
        stdout=subprocess.DEVNULL, stderr=stderr, text=True,
    )


def _run_until_the_gate(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, suite_text: str, *extra: str
) -> tuple[subprocess.Popen[str], Path, Path]:
    """Start `dlarena run` on a suite with a fault-gate cell; return once that cell is running.

    The gate cell runs until the test creates the gate file (the third value), however long that
    takes: a test stops or releases it when it chooses, never racing a limit. The second value is
    the file where the cell's child writes its pid.
    """
    pidfile, gate = tmp_path / "children.txt", tmp_path / "gate"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    monkeypatch.setenv("DLARENA_FAULT_GATE", str(gate))
    suite_path = tmp_path / "s.toml"
    suite_path.write_text(suite_text)
    process = _start_run(suite_path, db_path, *extra)
    try:
        _until(pidfile.exists, "the gate cell starting")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, pidfile, gate


def test_each_result_is_in_the_database_before_the_next_cell_starts(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the orchestrator while its second cell runs: the first cell's result is there, intact."""
    process, pidfile, _ = _run_until_the_gate(
        tmp_path, db_path, monkeypatch, _suite(["fault-none", "fault-gate"]), "--quiet")
    process.kill()
    process.wait()
    for pid in pidfile.read_text().split():
        subprocess.run(["kill", "-9", pid], check=False)
    connection = sqlite3.connect(db_path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = connection.execute(
        "SELECT c.framework, r.status FROM cells c LEFT JOIN results r ON r.cell_id = c.id ORDER BY c.position"
    ).fetchall()
    assert rows == [("fault-none", "ok"), ("fault-gate", None)]
    assert connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= 5


def _results(db_path: Path) -> list[tuple[str, int, str, int]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(
            "SELECT c.framework, r.repetition, r.status, r.id FROM results r JOIN cells c ON c.id = r.cell_id"
            " ORDER BY r.id"
        ).fetchall()


@contextlib.contextmanager
def _machine_busy() -> Iterator[None]:
    """Hold the test's measuring lock, as another run on the machine would."""
    with open(os.environ["DLARENA_LOCK"], "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def test_a_killed_run_resumes_where_it_stopped_without_duplicating_or_changing_results(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    """kill -9 the orchestrator in the middle of a cell, then `run --resume`: each process runs exactly once."""
    suite_text = _and_a_hang("repetitions = 2\n" + _suite(["fault-none", "fault-gate", "fault-wrong"]),
                             SHORT_HANG_TIMEOUT_S)
    # once the gate cell has started, fault-none's first process is stored
    process, _, gate = _run_until_the_gate(tmp_path, db_path, monkeypatch, suite_text, "--quiet")
    process.kill()
    process.wait()
    before = _results(db_path)
    assert [(framework, repetition, status) for framework, repetition, status, _ in before] == [
        ("fault-none", 0, "ok")]
    with sqlite3.connect(db_path) as connection:
        stored_before = connection.execute("SELECT * FROM results").fetchall()

    gate.touch()
    resumed = cli("run", "--resume", "--db", str(db_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 process stored before" in resumed.stderr
    after = _results(db_path)
    assert after[0] == before[0]
    assert sorted((framework, repetition, status) for framework, repetition, status, _ in after) == [
        ("fault-gate", 0, "ok"), ("fault-gate", 1, "ok"), ("fault-hang", 0, "timeout"),
        ("fault-none", 0, "ok"), ("fault-none", 1, "ok"), ("fault-wrong", 0, "ok"), ("fault-wrong", 1, "ok"),
    ]
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT * FROM results WHERE id = ?", (before[0][3],)).fetchall() == stored_before
        status, resumes = connection.execute("SELECT status, resumes FROM runs").fetchone()
    assert status == "finished" and len(json.loads(resumes)) == 1
    # nothing left: said at once, without waiting for the machine (it is busy: --no-wait would refuse)
    with _machine_busy():
        again = cli("run", "--resume", "--no-wait", "--db", str(db_path))
    assert again.returncode == 0, again.stderr
    assert "has nothing to resume (4 cells: 3 ok, 1 timeout)" in again.stderr
    assert _results(db_path) == after  # nothing run, nothing duplicated


def _hint(stderr: str, command: str) -> list[str]:
    """The arguments of the `dlarena COMMAND ...` that a message tells the user to type."""
    quoted = next(part for part in stderr.split("`")[1::2] if part.startswith(f"dlarena {command}"))
    return shlex.split(quoted)[1:]


def test_a_worker_dies_with_a_launcher_killed_outright(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher killed by SIGKILL cleans nothing up itself (a crashed `dlarena run`, or a Ray node's task
    process): its worker's guard (orchestrate/guard.py) takes the worker and the worker's child down."""
    pidfile = tmp_path / "children.txt"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    monkeypatch.setenv("DLARENA_FAULT_GATE", str(tmp_path / "never-opened"))
    launcher = subprocess.Popen([sys.executable, "-c", (
        "from dlarena.orchestrate.executor import LocalExecutor; from dlarena.plan.cell import Cell;"
        f" LocalExecutor().execute(Cell('fault-gate', 'fcn5-small', 'train', 4, 1), {GENEROUS_TIMEOUT_S})")])
    try:
        _until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the gate cell starting")
        child = int(pidfile.read_text().split()[0])
        worker = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert _alive(worker) and _alive(child)
    finally:
        launcher.kill()
        launcher.wait()
    _until(lambda: not _alive(child) and not _alive(worker), "the worker and its child ending")


def test_ctrl_c_marks_the_running_cell_interrupted_and_says_how_to_resume(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    suite_text = "repetitions = 2\n" + _suite(["fault-none", "fault-gate", "fault-wrong"])
    process, pidfile, gate = _run_until_the_gate(tmp_path, db_path, monkeypatch, suite_text)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=STATE_WAIT_S)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    # 6 processes planned: fault-none's first finished, the gate's first was cut, 4 never started
    assert "interrupted after " in stderr
    assert "1 process finished (1 ok) and stored, 1 interrupted, 4 not started" in stderr
    assert "stopped after " in stderr and "done in" not in stderr
    resume = _hint(stderr, "run --resume")
    assert resume[-2:] == ["--db", str(db_path)]  # following the hint finds the run
    for pid in pidfile.read_text().split():  # the gate cell's child went down with it
        _until(lambda pid=int(pid): not _alive(pid), "the cut cell's child dying")
    assert [(framework, status) for framework, _, status, _ in _results(db_path)] == [
        ("fault-none", "ok"), ("fault-gate", "interrupted")]
    assert "| fault-gate | *interrupted* |" in cli("report", "--db", str(db_path)).stdout

    gate.touch()
    resumed = cli(*resume)
    assert resumed.returncode == 0, resumed.stderr
    assert [(framework, repetition, status) for framework, repetition, status, _ in _results(db_path)] == [
        ("fault-none", 0, "ok"), ("fault-gate", 0, "interrupted"), ("fault-gate", 0, "ok"), ("fault-wrong", 0, "ok"),
        ("fault-none", 1, "ok"), ("fault-gate", 1, "ok"), ("fault-wrong", 1, "ok")]
    assert "finished in " in resumed.stderr and "3 cells: 3 ok" in resumed.stderr
    report = cli(*_hint(resumed.stderr, "report"))
    assert report.returncode == 0 and "*interrupted*" not in report.stdout and "| fault-gate |" in report.stdout


def test_a_second_run_waits_showing_the_first_ones_progress_or_refuses_naming_it(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    first, _, gate = _run_until_the_gate(
        tmp_path, db_path, monkeypatch, "repetitions = 1\n" + _suite(["fault-none", "fault-gate"]), "--quiet")
    waiter = None
    try:
        with sqlite3.connect(db_path) as connection:
            (first_id,) = connection.execute("SELECT id FROM runs").fetchone()
        # refused at once, naming the run; a mistyped database folder is not created
        other_db = tmp_path / "typo" / "other.db"
        args = ("--frameworks", "fault-none", "--workloads", "fcn5-small", "--scenarios", "train", "--threads", "1",
                "--repetitions", "1", "--target-ci", "0", "--db", str(other_db))
        refused = cli("run", *args, "--no-wait")
        assert refused.returncode == 2 and "is measuring on this machine" in refused.stderr
        assert f"run {first_id} (pid {first.pid}" in refused.stderr and "Traceback" not in refused.stderr
        assert not other_db.parent.exists()
        # reading the database being written works meanwhile
        assert cli("report", "--db", str(db_path)).returncode == 0
        # waiting shows whom for, for how long, and how far that run is (read from its database)
        log = tmp_path / "waiter.log"
        with open(log, "w") as stream:
            waiter = subprocess.Popen([sys.executable, "-m", "dlarena.cli", "run", *args], stdout=subprocess.DEVNULL,
                                      stderr=stream, text=True)
        _until(lambda: "waiting" in log.read_text(), "the waiting line")
        line = log.read_text()
        assert f"for run {first_id} (pid {first.pid}, database {db_path.resolve()}" in line
        assert "1 of 2 processes done" in line and "waiting 0 s for" in line
        assert not other_db.parent.exists()  # nothing is created while waiting
        gate.touch()
        assert first.wait(timeout=STATE_WAIT_S) == 0
        assert waiter.wait(timeout=STATE_WAIT_S) == 0, log.read_text()
    finally:
        for process in (first, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    # the waiting run was stamped when it started measuring, after the first had finished
    with sqlite3.connect(db_path) as connection:
        (first_end,) = connection.execute("SELECT finished_at FROM runs").fetchone()
    with sqlite3.connect(other_db) as connection:
        second_id, second_start = connection.execute("SELECT id, started_at FROM runs").fetchone()
    first_end_utc = datetime.fromisoformat(first_end)
    assert datetime.fromisoformat(second_start) >= first_end_utc
    assert datetime.strptime(second_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC) >= first_end_utc


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
