"""The worker's result record, writer side: its schema number and the one function that writes it.

The orchestrator (on the host's Python) reads the record back and refuses one whose ``schema`` is not
``RESULT_SCHEMA``: a worker of another dlarena (an environment linked to another checkout) must never
have its figures mixed with this one's. Stdlib only and Python 3.6+ (see the package's docstring).
"""

import json
import os
from typing import Any, Dict, Optional

# The version of the record's layout; raise it when a key changes meaning or goes away.
RESULT_SCHEMA = 1
# Suffix of the file being written: the result's own name appears only once it is complete.
PARTIAL_SUFFIX = ".partial"

# Written by the verify mode beside its .npz files, one JSON line as each network starts and ends, so
# that the verify command knows, after a crash or a timeout, which network took the worker down and
# which ones were done (a worker runs every network of one framework and precision).
VERIFY_PROGRESS_FILE = "progress.jsonl"


def write_result(result: Dict[str, Any], path: Optional[str] = None) -> None:
    """Write ``result``, stamped with ``RESULT_SCHEMA``, as one line of JSON to ``path``, or to
    standard output without one (a cell re-run by hand from its stored command prints its result).

    The file is written beside its final name and renamed into place, so the orchestrator never
    reads a half-written result, even from a worker killed while writing.
    """
    record = dict(result)
    record["schema"] = RESULT_SCHEMA
    text = json.dumps(record)
    if path is None:
        print(text)
        return
    partial = path + PARTIAL_SUFFIX
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
