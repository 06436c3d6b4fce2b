"""The ``thread-limit`` probe, the same for every framework: given one thread by its own controls (the
thread variables and API calls of a one-thread cell), with every core allowed (the worker does not pin
this probe: registry ``pinned=False``), does the framework keep to one thread computing at a time?

It times a small training cell while a sampler reads the state of each of the process's threads
from /proc every SAMPLE_INTERVAL_S. The figure that decides is the share of samples in which two or
more threads wanted a core at once (state R: running, or runnable and waiting for a core): unlike
the process's cores used, it does not depend on the machine's load, since a thread waiting for a
core is still counted. A framework whose Python thread hands each op to an executor thread
alternates them (one R at a time) and passes; one that computes on two threads at once fails.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from dlarena.frameworks.base import Unsupported
from dlarena.plan.cell import Cell
from dlarena.probes.checks import ProbeFailure
from dlarena.probes.runner import ProbeContext

# The cell it times: enough work per step for a stray thread to show (the conformance tests' thread
# check times the same), and an MLP where a framework has no convolution.
THREAD_WORKLOADS = ("karmanov-cnn-small", "fcn5-small")
# How often the thread states are read: a read of a few dozen /proc files costs well under a
# millisecond, so this takes under 5% of a core and gives thousands of samples in a cell's seconds.
SAMPLE_INTERVAL_S = 0.02
# The share of samples with two threads wanting a core that a one-thread framework still shows: a
# housekeeping thread's tick, a garbage collection or the import of a module overlapping a step land
# in a few percent of samples; a second compute thread in most of them.
PARALLEL_SHARE_LIMIT = 0.1


class ThreadStates:
    """Samples how many of the process's threads (the sampler's own apart) are runnable at once."""

    def __init__(self) -> None:
        self.samples = 0
        self.parallel = 0  # samples with two or more runnable threads
        self.most = 0  # the most runnable threads seen at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlarena-thread-states", daemon=True)

    def __enter__(self) -> ThreadStates:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        own = str(threading.get_native_id())
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            running = sum(1 for tid in os.listdir("/proc/self/task") if tid != own and _state(tid) == "R")
            self.samples += 1
            self.parallel += running >= 2
            self.most = max(self.most, running)

    @property
    def parallel_share(self) -> float:
        return self.parallel / self.samples if self.samples else 0.0


def _state(tid: str) -> str:
    """A thread's state letter (stat(5)'s third field), or '' once it has ended."""
    try:
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def thread_limit(context: ProbeContext) -> dict[str, Any]:
    from dlarena.frameworks.registry import framework_info
    from dlarena.spec.catalogue import get_workload
    from dlarena.worker import measure_cell

    info = framework_info(context.framework)
    scenario = "train" if "train" in info.scenarios else "infer"
    workload = next((name for name in THREAD_WORKLOADS
                     if info.unsupported_reason(get_workload(name).network.layer_types(), scenario) is None), None)
    if workload is None:
        raise Unsupported(f"{context.framework} runs none of {', '.join(THREAD_WORKLOADS)}")
    with ThreadStates() as states:
        result = measure_cell(Cell(context.framework, workload, scenario, 32, 1))
    if result.get("status") != "ok":
        raise ProbeFailure(f"its {workload} {scenario} cell was {result.get('status')}: {result.get('message', '')}")
    figures = {"parallel_share": states.parallel_share, "most_runnable": states.most, "samples": states.samples,
               "cores_used": float(result["cores_used"]), "workload": workload, "scenario": scenario}
    if states.parallel_share > PARALLEL_SHARE_LIMIT:
        raise ProbeFailure(f"at one thread, {states.parallel_share:.0%} of {states.samples} samples found two or"
                           f" more of its threads computing or waiting for a core at once (up to {states.most};"
                           f" limit {PARALLEL_SHARE_LIMIT:.0%})", figures)
    return figures
