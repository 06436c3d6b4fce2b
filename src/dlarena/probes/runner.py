"""Worker side: answer one probe for one framework, inside the worker process (``--probe NAME``),
after the worker has set its thread limits and variables as for any cell.

A framework's answer is the function named after the probe in its probe module (the registry's
``probes``), called with a ProbeContext; it returns the probe's figures, raises ProbeFailure when its
answer is wrong, or Unsupported when the framework cannot express the question. A probe that every
framework answers the same way (``thread-limit``) is written once, in the module GENERIC names.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any

from dlarena.plan.cell import Cell
from dlarena.probes.checks import ProbeFailure
from dlarena.probes.registry import probe_info


@dataclass(frozen=True)
class ProbeContext:
    framework: str  # the framework asked: torch and torch-compile share a probe module
    threads: int
    folder: str  # a scratch folder of the worker's own, for files a probe writes


# Probes that every framework answers the same way: the module holding each one's function.
# The deployment probes' protocol is the same everywhere; a framework's probe module supplies hooks.
GENERIC = {"thread-limit": "dlarena.probes.threads",
           **dict.fromkeys(("export-onnx", "save-load", "aot-export", "mobile", "cold-start"),
                           "dlarena.probes.deployment")}


def answer(name: str, cell: Cell, folder: str) -> dict[str, Any]:
    """The probe's outcome as the worker's result: ``probe`` holds outcome, figures and message."""
    from dlarena.frameworks.base import Unavailable, Unsupported
    from dlarena.frameworks.registry import framework_info

    probe = probe_info(name)
    context = ProbeContext(cell.framework, cell.threads, folder)
    start = time.perf_counter()
    module = GENERIC.get(name) or framework_info(cell.framework).probes
    if module is None:
        raise Unsupported(f"{cell.framework} has no probe module yet")
    try:
        loaded = importlib.import_module(module)
    except ImportError as error:
        raise Unavailable(f"{cell.framework}'s probes cannot be imported: {error}") from None
    function = getattr(loaded, probe.function, None)
    if function is None:
        reasons: dict[str, str] = getattr(loaded, "UNSUPPORTED", {})
        raise Unsupported(reasons.get(name) or f"{cell.framework} does not answer the {name!r} probe yet ({module}"
                          f" has no {probe.function})")
    try:
        figures = function(context)
    except ProbeFailure as failure:
        return {"outcome": "fail", "message": str(failure), "figures": failure.figures,
                "seconds": time.perf_counter() - start}
    except (Unsupported, Unavailable):
        raise
    except Exception as error:  # the framework raised: the probe fails, with the error's class and first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {"outcome": "fail", "message": f"{type(error).__name__}: {first}"[:500], "figures": {},
                "seconds": time.perf_counter() - start}
    return {"outcome": "pass", "message": "", "figures": figures, "seconds": time.perf_counter() - start}
