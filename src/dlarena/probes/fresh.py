"""A fresh process that loads one deployed artefact and runs it once (probes/deployment.py):

    python -m dlarena.probes.fresh MODULE:FUNCTION (ARTEFACT WORKLOAD INPUTS.npy OUTPUTS.npy)...

It imports MODULE (which imports the framework, or only the runtime the artefact needs: ONNX Runtime,
a LiteRT interpreter), then for each artefact in turn calls FUNCTION(ARTEFACT, workload) for a run
function, runs it on the inputs and saves the logits; it prints one JSON line of its own clocks:
interpreter start (from the process's start time in /proc to this module's first line) and import,
then each artefact's load and first call, in seconds, with the wall-clock time of its answer (the
process's exit, which can take seconds, comes after the last).
"""

from __future__ import annotations

import time

STARTED = time.time()  # before any import of ours: the interpreter's own start-up is measured apart

import importlib  # noqa: E402  (after the clock: these imports are part of what is measured)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _process_start() -> float:
    """When this process began, in epoch seconds, from /proc (Linux); this module's start elsewhere."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as handle:
            ticks = float(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return STARTED


def main(argv: list[str]) -> int:
    loader, *artefacts = argv
    module_name, function_name = loader.split(":")
    interpreter_s = max(0.0, STARTED - _process_start())
    start = time.perf_counter()
    module = importlib.import_module(module_name)
    import numpy as np

    from dlarena.spec.catalogue import get_workload

    imported = time.perf_counter()
    items = []
    for index in range(0, len(artefacts), 4):
        artefact, workload_name, inputs_path, outputs_path = artefacts[index:index + 4]
        begun = time.perf_counter()
        run = getattr(module, function_name)(artefact, get_workload(workload_name))
        loaded = time.perf_counter()
        logits = np.asarray(run(np.load(inputs_path)))
        called = time.perf_counter()
        np.save(outputs_path, logits)
        items.append({"load_s": loaded - begun, "first_call_s": called - loaded, "answered_at": time.time()})
    print(json.dumps({"interpreter_s": interpreter_s, "import_s": imported - start, "items": items}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
