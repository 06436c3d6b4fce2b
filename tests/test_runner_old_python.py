"""dlarena_runner under the oldest Python 3 on this machine, in a real process that cannot see dlarena.

The runner is what every worker runs whatever its environment's interpreter (CNTK's Python 3.6 in the
next frameworks), so it is run here as a managed environment runs it: a ``worker-path`` folder holding
a link to the package, on ``PYTHONPATH``, with no dlarena and no NumPy to lean on. The child times a
stdlib busy loop under several stopping rules, reads its resources, samples beside the loop and writes
its result with the runner's writer; this test reads that record back on the host's Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dlarena_runner
from dlarena.environments.manage import interpreter
from dlarena_runner.record import RESULT_SCHEMA

# A busy step: this many additions take about half a millisecond on Python 3.6 here, short enough for
# the loops below to take well under a second each, long enough to cost measurable CPU time.
BUSY_ITERATIONS = 20_000
# The stopping rules tried, one loop each: which bound must end it, and the settings that make it so.
# The time bounds are small (tenths of a second) so the whole child runs in about a second.
MIN_TIME_S = 0.2  # the binding minimum of "time": 5 steps of ~0.5 ms take far less
MAX_TIME_S = 0.1  # the cap of "max_time": its minimum time (100 s) is never reached
SETTINGS = {
    "time": {"warmup_steps": 2, "min_steps": 5, "max_steps": 100_000, "min_time_s": MIN_TIME_S, "max_time_s": 30.0},
    "min_steps": {"warmup_steps": 0, "min_steps": 12, "max_steps": 100_000, "min_time_s": 0.0, "max_time_s": 30.0},
    "max_steps": {"warmup_steps": 1, "min_steps": 3, "max_steps": 7, "min_time_s": 100.0, "max_time_s": 300.0},
    "max_time": {"warmup_steps": 0, "min_steps": 2, "max_steps": 100_000, "min_time_s": 100.0,
                 "max_time_s": MAX_TIME_S},
}
# Busy steps run between two readings of the process's CPU time: ~0.1 s of CPU, ten ticks of the 100 Hz
# clock that os.times() counts in, whatever share of a core a busy machine gives the child.
CPU_BURN_STEPS = 200
# The sampler's interval in the child: fast enough for several samples within MIN_TIME_S.
SAMPLE_INTERVAL_S = 0.01
# Bound on the child's whole run: its loops take about half a second; only a hung child reaches this.
CHILD_TIMEOUT_S = 120.0

CHILD = textwrap.dedent("""
    import importlib.util, json, sys

    # The boundary: what the child can import is the runner and the standard library.
    assert importlib.util.find_spec("dlarena") is None, "dlarena must not be importable here"
    from dlarena_runner import record, resources, sampler, timing
    assert "numpy" not in sys.modules, "the runner must not import NumPy"

    class Settings:  # any object with the five attributes: no dlarena.plan.cell.Measurement here
        def __init__(self, values):
            self.__dict__.update(values)

    def busy():
        total = 0
        for value in range(BUSY_ITERATIONS):
            total += value

    out, settings = sys.argv[1], json.loads(sys.argv[2])
    cpu_before = resources.cpu_seconds()
    for _ in range(CPU_BURN_STEPS):
        busy()
    cpu_after = resources.cpu_seconds()
    loops = {}
    for name, values in sorted(settings.items()):
        steady = sampler.ResourceSampler(SAMPLE_INTERVAL_S)  # entered by the loop around its steady state
        timings = timing.run_timed(busy, lambda: None, Settings(values), steady=steady)
        loops[name] = {"first_step_s": timings.first_step_s, "warmup": len(timings.warmup_s),
                       "samples": len(timings.samples_s), "loop_wall_s": timings.loop_wall_s,
                       "loop_cpu_s": timings.loop_cpu_s, "cores_used": timings.cores_used,
                       "resources": steady.report()}
    result = {"status": "ok", "python": list(sys.version_info[:3]), "loops": loops,
              "cpu_before_s": cpu_before, "cpu_after_s": cpu_after,
              "rss_bytes": resources.current_rss_bytes(), "peak_rss_bytes": resources.peak_rss_bytes()}
    record.write_result(result, out)
    record.write_result({"status": "printed"})  # no path: one line on standard output
""")


def oldest_python() -> str | None:
    """The oldest interpreter older than this one and no older than the runner's minimum, or None."""
    major, newest = sys.version_info[:2]
    first = dlarena_runner.MINIMUM_PYTHON[1] if dlarena_runner.MINIMUM_PYTHON[0] == major else 0
    for minor in range(first, newest):
        found = interpreter(major, minor)
        if found is not None:
            return found
    return None


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """The record the runner wrote under the oldest interpreter, and what it printed."""
    python = oldest_python()
    if python is None:
        pytest.skip(f"no Python from {'.'.join(map(str, dlarena_runner.MINIMUM_PYTHON))} to older than this "
                    f"{sys.version_info[0]}.{sys.version_info[1]} on PATH or in pyenv: the runner's old-Python "
                    "test needs one (CI's machine has pyenv's 3.6)")
    folder = tmp_path_factory.mktemp("old-python")
    worker_path = folder / "worker-path"  # as a managed environment's: a link to the package, nothing else
    worker_path.mkdir()
    (worker_path / "dlarena_runner").symlink_to(Path(dlarena_runner.__file__).resolve().parent,
                                                target_is_directory=True)
    script = CHILD.replace("BUSY_ITERATIONS", str(BUSY_ITERATIONS)).replace(
        "SAMPLE_INTERVAL_S", repr(SAMPLE_INTERVAL_S)).replace("CPU_BURN_STEPS", str(CPU_BURN_STEPS))
    out = folder / "result.json"
    # Only PYTHONPATH (and PATH): nothing of this process's environment leaks in. -s: no user site
    # folder; PYTHONDONTWRITEBYTECODE: no Python 3.6 bytecode left in the source tree.
    environment = {"PYTHONPATH": str(worker_path), "PATH": os.environ.get("PATH", ""),
                   "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run([python, "-s", "-c", script, str(out), json.dumps(SETTINGS)], env=environment,
                               cwd=folder, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert completed.returncode == 0, f"{python} failed:\n{completed.stderr}"
    assert [path.name for path in folder.iterdir() if path.is_file()] == ["result.json"]  # renamed into place
    return json.loads(out.read_text(encoding="utf-8")), completed.stdout


def test_the_record_is_written_with_the_schema_the_orchestrator_reads(child: tuple[dict[str, Any], str]) -> None:
    record, printed = child
    assert record["schema"] == RESULT_SCHEMA and record["status"] == "ok"
    assert tuple(record["python"][:2]) < sys.version_info[:2]  # it really ran on an older interpreter
    assert tuple(record["python"][:2]) >= dlarena_runner.MINIMUM_PYTHON
    assert json.loads(printed.splitlines()[-1]) == {"status": "printed", "schema": RESULT_SCHEMA}


def test_each_stopping_rule_ends_the_loop_where_it_should(child: tuple[dict[str, Any], str]) -> None:
    loops = child[0]["loops"]
    for name, loop in loops.items():
        assert loop["warmup"] == SETTINGS[name]["warmup_steps"], name
        assert loop["first_step_s"] > 0, name
    assert loops["time"]["samples"] > SETTINGS["time"]["min_steps"]  # time, not the count, was binding
    assert loops["time"]["loop_wall_s"] >= MIN_TIME_S
    assert loops["min_steps"]["samples"] == SETTINGS["min_steps"]["min_steps"]
    assert loops["max_steps"]["samples"] == SETTINGS["max_steps"]["max_steps"]
    assert MAX_TIME_S <= loops["max_time"]["loop_wall_s"] < SETTINGS["max_time"]["min_time_s"]
    assert loops["max_time"]["samples"] >= SETTINGS["max_time"]["min_steps"]


def test_cpu_time_grows_and_memory_is_read(child: tuple[dict[str, Any], str]) -> None:
    record = child[0]
    assert record["cpu_after_s"] > record["cpu_before_s"]
    for name, loop in record["loops"].items():  # a loop's own share may be under one 10 ms tick: not > 0
        assert loop["loop_cpu_s"] >= 0 and loop["cores_used"] == pytest.approx(
            loop["loop_cpu_s"] / loop["loop_wall_s"]), name
    loop = record["loops"]["time"]
    assert record["rss_bytes"] > 0 and record["peak_rss_bytes"] > 0
    resources = loop["resources"]
    assert resources["samples"] >= 2 and resources["rss_peak_bytes"] > 0  # on entry and on exit at least
    assert "gpu_message" not in resources  # no GPU asked for
