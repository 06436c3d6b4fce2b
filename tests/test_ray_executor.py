"""`dlarena run --executor ray` against a real Ray cluster on this machine.

Ray's own cluster utilities start a head and the nodes as real raylet processes on 127.0.0.1's
machine, each node with one measurement slot and a name label; `dlarena run` joins the cluster as
any driver would. The fault test kills a node outright while its cell runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dlarena.orchestrate.ray_executor import NODE_LABEL, SLOT_RESOURCE
from test_orchestrator import FAST, STATE_WAIT_S, _alive, _until

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install 'dlarena[ray]')")

# Ray's object store is sized from memory (30% by default) in shared memory; the cells pass a few
# kilobytes through it, and three nodes at the default would hold most of /dev/shm.
OBJECT_STORE_BYTES = 80 << 20
# The label the sweep tests select their nodes by; node c lacks the fault frameworks (it was started
# without DLARENA_FAULT_FRAMEWORKS), as a node may lack a framework's environment.
FAULTS_LABEL = "fault-frameworks"
FAULT_FRAMEWORKS_VARIABLE = "DLARENA_FAULT_FRAMEWORKS"

pytestmark = pytest.mark.xdist_group("ray-cluster")


@contextlib.contextmanager
def _variables(**values: str) -> Iterator[None]:
    """Environment variables for the nodes started inside: a node's processes take the environment it
    was started with, whatever the test's is later."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_cluster(nodes: dict[str, bool]) -> tuple[Any, dict[str, Any]]:
    """A head without a slot and one node per name, with a slot; True: it knows the fault frameworks."""
    cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False})
    started: dict[str, Any] = {}
    try:
        for name, knows_faults in nodes.items():
            saved = os.environ.pop(FAULT_FRAMEWORKS_VARIABLE, None)
            if knows_faults:  # a node's processes take the environment it was started with
                os.environ[FAULT_FRAMEWORKS_VARIABLE] = "1"
            try:
                started[name] = cluster.add_node(
                    num_cpus=0, resources={SLOT_RESOURCE: 1}, object_store_memory=OBJECT_STORE_BYTES,
                    labels={NODE_LABEL: name, FAULTS_LABEL: "yes" if knows_faults else "no"})
            finally:
                os.environ.pop(FAULT_FRAMEWORKS_VARIABLE, None)
                if saved is not None:
                    os.environ[FAULT_FRAMEWORKS_VARIABLE] = saved
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, started


@pytest.fixture(scope="module")
def gate_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The pidfile and gate file of the module cluster's fault-gate cells."""
    folder = tmp_path_factory.mktemp("gate")
    return folder / "children.txt", folder / "gate"


@pytest.fixture(scope="module")
def cluster(gate_files: tuple[Path, Path]) -> Iterator[Any]:
    pidfile, gate = gate_files
    with _variables(DLARENA_FAULT_PIDFILE=str(pidfile), DLARENA_FAULT_GATE=str(gate)):
        started, _ = _start_cluster({"a": True, "b": True, "c": False})
    try:
        yield started
    finally:
        started.shutdown()


def _suite(tmp_path: Path, frameworks: list[str], workloads: list[str], repetitions: int = 1) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'name = "cluster"\nframeworks = {json.dumps(frameworks)}\nworkloads = {json.dumps(workloads)}\n'
        f'scenarios = ["train"]\nthreads = [1]\nbatch_sizes = [4]\ntimeout_s = 600\ntarget_ci = 0\n'
        f"repetitions = {repetitions}\n{FAST}")
    return path


def _results(db_path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT c.id AS cell_id, c.framework, c.workload, c.node AS pinned, r.node, r.status, r.message,"
            " r.environment_id, r.data, e.data AS machine FROM results r JOIN cells c ON c.id = r.cell_id"
            " LEFT JOIN environments e ON e.id = r.environment_id ORDER BY r.id")]


def test_a_spread_sweep_runs_every_cell_on_every_chosen_node_and_reports_the_nodes_apart(
    cluster: Any, tmp_path: Path, db_path: Path, cli: Cli,
) -> None:
    suite = _suite(tmp_path, ["fault-none"], ["fcn5-small", "digits-mlp"], repetitions=2)
    done = cli("run", "--suite", str(suite), "--db", str(db_path), "--executor", "ray", "--address",
               cluster.address, "--nodes", f"{FAULTS_LABEL}=yes", "--spread", "--quiet")
    assert done.returncode == 0, done.stderr
    results = _results(db_path)
    # 2 workloads on each of the 2 chosen nodes, 2 processes each, every one on its cell's node
    assert sorted((row["pinned"], row["workload"]) for row in results) == sorted(
        (node, workload) for node in "ab" for workload in ("fcn5-small", "digits-mlp") for _ in range(2))
    assert all(row["status"] == "ok" and row["node"] == row["pinned"] for row in results)
    for row in results:  # the node's machine, and the canary read there around the process
        machine, canary = json.loads(row["machine"]), json.loads(row["data"])["canary"]
        assert machine["cpu_model"] and machine["cores"] >= 1 and "fault-none" not in machine["frameworks"]
        assert canary["before_s"] > 0 and canary["after_s"] > 0
    with sqlite3.connect(db_path) as db:  # each node's peak, probed there, and each cell's share of its node's
        assert db.execute("SELECT node FROM peaks WHERE threads = 1 ORDER BY node").fetchall() == [("a",), ("b",)]
        assert db.execute("SELECT COUNT(*) FROM summaries WHERE peak_percent > 0").fetchone() == (4,)
    report = cli("report", "--db", str(db_path))
    assert report.returncode == 0, report.stderr
    assert "Measured on 2 cluster nodes" in report.stdout
    assert report.stdout.count("Peak (float32 matrix product through NumPy's") == 2  # one per node
    assert "- node **a** (4 processes)" in report.stdout and "- node **b** (4 processes)" in report.stdout
    for node in "ab":  # ranked and tabled per node, never across the two
        assert f"**fcn5-small, train, node {node}**" in report.stdout
        assert f"### fcn5-small, train, cpu, batch 4, node {node}" in report.stdout
    # and the machines compared, cell by cell: node b's against node a's
    assert "## The nodes compared" in report.stdout and "### node b (B) against node a (A)" in report.stdout
    compared = cli("compare", "latest", "--nodes", "b,a", "--db", str(db_path))
    assert compared.returncode == 0, compared.stderr
    assert "# node a (B) against node b (A)" in compared.stdout
    assert compared.stdout.count("| fault-none | ") == 2  # both workloads, each on both nodes
    unknown = cli("compare", "latest", "--nodes", "a,z", "--db", str(db_path))
    assert unknown.returncode == 2 and "measured nothing on a node 'z'; its nodes: a, b" in unknown.stderr


def test_each_cell_runs_once_where_a_slot_is_free_and_a_node_without_the_framework_says_so(
    cluster: Any, tmp_path: Path, db_path: Path, cli: Cli,
) -> None:
    suite = _suite(tmp_path, ["fault-none"], ["fcn5-small", "fcn8-small", "digits-mlp"])
    done = cli("run", "--suite", str(suite), "--db", str(db_path), "--executor", "ray", "--address",
               cluster.address, "--nodes", f"{FAULTS_LABEL}=yes", "--quiet")
    assert done.returncode == 0, done.stderr
    results = _results(db_path)
    assert sorted(row["workload"] for row in results) == ["digits-mlp", "fcn5-small", "fcn8-small"]
    assert all(row["status"] == "ok" and row["node"] in ("a", "b") and row["pinned"] is None for row in results)
    with sqlite3.connect(db_path) as db:  # a cell run wherever a slot was free has no one machine's peak
        assert db.execute("SELECT COUNT(*) FROM summaries WHERE peak_percent IS NOT NULL").fetchone() == (0,)

    elsewhere = tmp_path / "c.db"
    lacking = cli("run", "--suite", str(suite), "--db", str(elsewhere), "--executor", "ray", "--address",
                  cluster.address, "--nodes", f"{NODE_LABEL}=c", "--quiet")
    assert lacking.returncode == 1, lacking.stderr  # nothing could be measured
    results = _results(elsewhere)
    assert len(results) == 3 and all(row["status"] == "unavailable" and row["node"] == "c" for row in results)
    assert results[0]["message"].startswith("on node c: ") and "fault-none" in results[0]["message"]


def test_nodes_that_cannot_serve_are_refused_in_one_sentence(cluster: Any, tmp_path: Path, cli: Cli) -> None:
    suite = _suite(tmp_path, ["fault-none"], ["fcn5-small"])
    base = ("run", "--suite", str(suite), "--db", str(tmp_path / "r.db"), "--executor", "ray", "--quiet")
    none = cli(*base, "--address", cluster.address, "--nodes", "cpu-type=sparc")
    assert none.returncode == 2 and "Traceback" not in none.stderr
    assert "no node of the Ray cluster offers a measurement slot and has the labels cpu-type=sparc" in none.stderr
    assert "a (" in none.stderr and "c (" in none.stderr  # the nodes there are, with their labels
    malformed = cli(*base, "--address", cluster.address, "--nodes", "sparc")
    assert malformed.returncode == 2 and "KEY=VALUE" in malformed.stderr
    nowhere = cli(*base, "--address", "127.0.0.1:9")  # the discard port: nothing listens there
    assert nowhere.returncode == 2 and "no Ray cluster answers at 127.0.0.1:9" in nowhere.stderr
    local = cli("run", "--suite", str(suite), "--db", str(tmp_path / "r.db"), "--spread")
    assert local.returncode == 2 and "--spread chooses Ray nodes: it goes with --executor ray" in local.stderr
    assert not (tmp_path / "r.db").exists()


def test_ctrl_c_interrupts_the_cells_running_on_the_nodes_and_a_resume_runs_them_there(
    cluster: Any, gate_files: tuple[Path, Path], tmp_path: Path, db_path: Path, cli: Cli,
) -> None:
    pidfile, gate = gate_files
    suite = _suite(tmp_path, ["fault-gate"], ["fcn5-small", "digits-mlp"])
    run = subprocess.Popen(
        [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite), "--db", str(db_path), "--executor", "ray",
         "--address", cluster.address, "--nodes", f"{FAULTS_LABEL}=yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # both gate cells hold a node each: the two run at once
        _until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, "both gate cells starting")
        children = [int(pid) for pid in pidfile.read_text().split()]
        workers = [next(_ancestors(child)) for child in children]
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=STATE_WAIT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    assert "0 processes finished and stored, 2 interrupted, 0 not started" in stderr
    assert sorted(row["status"] for row in _results(db_path)) == ["interrupted", "interrupted"]
    _until(lambda: not any(_alive(pid) for pid in children + workers), "the interrupted workers ending")

    gate.touch()
    resumed = cli("run", "--resume", "--db", str(db_path), "--executor", "ray", "--address", cluster.address,
                  "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    finals = [row for row in _results(db_path) if row["status"] != "interrupted"]
    assert sorted(row["workload"] for row in finals) == ["digits-mlp", "fcn5-small"]
    assert all(row["status"] == "ok" and row["node"] in ("a", "b") for row in finals)
    local = cli("run", "--resume", "--db", str(db_path))
    assert local.returncode == 0 and "has nothing to resume" in local.stderr


def _ancestors(pid: int) -> Iterator[int]:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return
        yield pid


def test_a_node_killed_mid_cell_fails_that_cell_naming_it_and_the_sweep_goes_on(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gate cell holds its node until the test kills the node's raylet, as a crashed machine would."""
    pidfile = tmp_path / "children.txt"
    monkeypatch.setenv("DLARENA_FAULT_PIDFILE", str(pidfile))
    monkeypatch.setenv("DLARENA_FAULT_GATE", str(tmp_path / "never-opened"))
    cluster, nodes = _start_cluster({"a": True, "b": True})
    try:
        suite = _suite(tmp_path, ["fault-none"], ["fcn5-small", "fcn8-small", "digits-mlp"])
        # and one gate cell, which holds whichever node it lands on
        suite.write_text(suite.read_text() + '[[sweep]]\n[[sweep]]\nframeworks = ["fault-gate"]\n'
                                             'workloads = ["fcn5-small"]\n')
        run = subprocess.Popen(
            [sys.executable, "-m", "dlarena.cli", "run", "--suite", str(suite), "--db", str(db_path), "--executor",
             "ray", "--address", cluster.address, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            _until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the gate cell starting")
            child = int(pidfile.read_text().split()[0])
            worker = next(_ancestors(child))
            raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in nodes.items()}
            killed = next(raylets[pid] for pid in _ancestors(child) if pid in raylets)
            cluster.remove_node(nodes[killed], allow_graceful=False)
            _, stderr = run.communicate(timeout=STATE_WAIT_S)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 0, stderr
        results = _results(db_path)
        # every cell exactly one final result; the gate cell, on the killed node, failed naming it
        assert sorted((row["framework"], row["workload"]) for row in results) == [
            ("fault-gate", "fcn5-small"), ("fault-none", "digits-mlp"), ("fault-none", "fcn5-small"),
            ("fault-none", "fcn8-small")]
        (struck,) = [row for row in results if row["framework"] == "fault-gate"]
        assert struck["status"] == "failed" and struck["node"] == killed
        assert struck["message"].startswith(f"node {killed} died during the cell")
        assert all(row["status"] == "ok" and row["node"] in nodes for row in results if row is not struck)
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT status FROM runs").fetchone() == ("finished",)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # nothing of the killed cell outlives its node: the worker and its child died with the task's guard
        _until(lambda: not _alive(child) and not _alive(worker), "the killed node's worker and its child ending")
    finally:
        cluster.shutdown()
