"""Whole sweeps through real worker processes, with the test-only fault frameworks (NumPy only)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
                  "fault-unsupported", "fault-unavailable"]
    suite = parse_suite(_suite(frameworks, timeout_s=3), "faults")
    store = Store.open(db_path)
    summary = run_suite(suite, store, ["test"])
    rows = {row["framework"]: row for row in store.cell_rows(summary.run_id)}
    assert len(rows) == 7  # the repeated fault-none is one cell

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
    assert rows["fault-hang"]["status"] == "timeout" and "3 s" in rows["fault-hang"]["message"]
    assert rows["fault-unsupported"]["status"] == "unsupported"
    assert rows["fault-unavailable"]["status"] == "unavailable"
    assert summary.counts == {"ok": 1, "failed": 3, "timeout": 1, "unsupported": 1, "unavailable": 1}
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


def test_each_result_is_in_the_database_before_the_next_cell_starts(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the orchestrator while its second cell runs: the first cell's result is there, intact."""
    pidfile = tmp_path / "children.txt"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    suite_path = tmp_path / "s.toml"
    suite_path.write_text(_suite(["fault-none", "fault-hang"], timeout_s=120))
    process = subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite_path), "--db", str(db_path), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:  # the hang cell has started
            time.sleep(0.1)
        assert pidfile.exists(), "the second cell never started"
    finally:
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
