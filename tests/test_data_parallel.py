"""The train-dp scenario: replicas as processes, the check against one process, lockstep timing, and a
replica's failure. The real runs use PyTorch's DistributedDataParallel over gloo on this machine."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Cli
from dlarena.frameworks.data_parallel import CHECK_GRADIENT_TOLERANCE, planned_steps
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.plan.cell import Measurement
from test_orchestrator import STATE_WAIT_S, _alive, _until

TWO_CORES = len(os.sched_getaffinity(0)) >= 2
needs_torch_and_two_cores = pytest.mark.skipif(
    not (TWO_CORES and FRAMEWORKS["torch"].is_installed()), reason="needs torch and two cores (one per replica)")


def test_the_planned_steps_fill_the_measured_time_within_the_limits() -> None:
    settings = Measurement(warmup_steps=3, min_steps=10, min_time_s=1.0, max_steps=500, max_time_s=30.0)
    assert planned_steps(settings, [0.01, 0.01, 0.02], 0.5) == 100  # 1 s of 10 ms steps
    assert planned_steps(settings, [0.5, 0.5, 0.5], 2.0) == 10  # never fewer than min_steps
    assert planned_steps(settings, [0.0001] * 3, 0.1) == 500  # never more than max_steps
    assert planned_steps(replace_settings(settings, min_steps=10, min_time_s=100.0), [1.0] * 3, 1.0) == 30
    assert planned_steps(replace_settings(settings, warmup_steps=0), [], 0.05) == 20  # the first step decides


def replace_settings(settings: Measurement, **changes: float) -> Measurement:
    from dataclasses import replace

    return replace(settings, **changes)


@needs_torch_and_two_cores
def test_torch_replicas_compute_what_one_process_does_and_scale_against_one_replica(
    tmp_path: Path, db_path: Path, cli: Cli,
) -> None:
    done = cli("run", "--frameworks", "torch,jax", "--workloads", "karmanov-cnn-small", "--scenarios", "train-dp",
               "--replicas", "1,2", "--batch-sizes", "16,32", "--threads", "1", "--repetitions", "1", "--target-ci",
               "0", "--db", str(db_path), "--quiet")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT c.framework, c.config, r.status, r.message, r.data, (SELECT COUNT(*) FROM samples"
                          " WHERE result_id = r.id AND phase = 'steady') FROM results r"
                          " JOIN cells c ON c.id = r.cell_id").fetchall()
    torch_cells = [(json.loads(config), json.loads(data), steps) for framework, config, status, _, data, steps in rows
                   if framework == "torch" and status == "ok"]
    assert sorted((config.get("replicas", 1), config["batch_size"]) for config, _, _ in torch_cells) == [
        (1, 16), (1, 32), (2, 16), (2, 32)]
    for config, data, steps in torch_cells:
        dp = data["data_parallel"]
        assert dp["runtime"] == "torch.distributed gloo DistributedDataParallel"
        assert dp["per_replica_batch"] == config["batch_size"] // dp["replicas"]
        assert dp["check"]["passed"] and dp["check"]["gradient_error"] <= CHECK_GRADIENT_TOLERANCE
        assert data["affinity"] == [sorted(os.sched_getaffinity(0))[0]]  # replica 0's own core
        assert steps >= 5  # the planned steps, timed by replica 0
    unsupported = [message for framework, _, _, message, _, _ in rows if framework == "jax"]
    assert len(unsupported) == 4 and all("does not run the 'train-dp' scenario" in message for message in unsupported)
    report = cli("report", "--db", str(db_path))
    assert "## Data-parallel scaling" in report.stdout
    # 2 replicas at 32 against 1 at 16 (weak) and at 32 (strong); 2 at 16 against 1 at 16 (strong only)
    lines = [line for line in report.stdout.splitlines() if line.startswith("| torch | karmanov-cnn-small | 2 |")]
    assert len(lines) == 2 and all(line.count("%") >= 1 and "passed" in line for line in lines)
    assert sum(line.count("%") for line in lines) == 3


@needs_torch_and_two_cores
def test_a_replica_that_dies_fails_the_cell_at_once_and_takes_the_others_down(tmp_path: Path) -> None:
    cell = {"framework": "torch", "workload": "karmanov-cnn-small", "scenario": "train-dp", "batch_size": 16,
            "threads": 1, "replicas": 2,
            # timed for far longer than the test waits: the cell is stepping when the replica is killed
            "measurement": {"warmup_steps": 1, "min_steps": 100_000, "max_steps": 100_000, "min_time_s": 3600.0,
                            "max_time_s": 3600.0}}
    out = tmp_path / "result.json"
    worker = subprocess.Popen([sys.executable, "-m", "dlarena.worker", "--cell", json.dumps(cell), "--out", str(out)],
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def replica() -> int | None:
            try:
                children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            except OSError:
                return None
            return int(children[0]) if children else None

        _until(lambda: replica() is not None, "replica 1 starting")
        other = replica()
        assert other is not None
        # once both replicas step (the first steps are behind the check), kill the other one
        _until(lambda: _cpu_seconds(other) > 0.5, "replica 1 working")
        os.kill(other, signal.SIGKILL)
        worker.communicate(timeout=STATE_WAIT_S)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    result = json.loads(out.read_text())
    assert result["status"] == "failed"
    assert result["message"].startswith("replica 1 exited with code -9 before the cell ended")
    _until(lambda: not _alive(other), "replica 1 gone")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_batch_that_does_not_split_or_too_few_cores_is_one_sentence(tmp_path: Path, cli: Cli) -> None:
    base = ("run", "--frameworks", "torch", "--workloads", "karmanov-cnn-small", "--scenarios", "train-dp",
            "--db", str(tmp_path / "r.db"))
    uneven = cli(*base, "--replicas", "3", "--batch-sizes", "32", "--threads", "1")
    assert uneven.returncode == 2 and "a train-dp batch of 32 does not split evenly over 3 replicas" in uneven.stderr
    cores = len(os.sched_getaffinity(0))
    crowded = cli(*base, "--replicas", str(cores + 1), "--batch-sizes", str(cores + 1), "--threads", "1")
    assert crowded.returncode == 2 and f"{cores + 1} replicas of 1 thread need {cores + 1} cores" in crowded.stderr
    assert not (tmp_path / "r.db").exists()
