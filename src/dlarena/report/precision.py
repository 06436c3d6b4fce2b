"""What a lower precision gained: each cell measured in bfloat16 (or mixed-bf16, float16) beside the
same cell in float32, as float32's median step time over its own. A framework whose lower precision
is slower than its float32 is flagged: on a CPU with bfloat16 instructions that is a missing fast
path; on one without them (the machine line says which it has), bfloat16 runs on converted float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlarena.report.tables import table
from dlarena.report.units import format_seconds

Row = dict[str, Any]
# The precision every lower one is set against.
BASELINE = "float32"


def _key(row: Row) -> tuple[Any, ...]:
    return (row["framework"], row["workload"], row["scenario"], row["device"], row["batch_size"], row["threads"])


def pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """(float32 row, lower-precision row) for every timed cell measured ok in both."""
    timed = [row for row in rows if row["status"] == "ok" and row["scenario"] != "accuracy" and row.get("median_s")]
    baseline = {_key(row): row for row in timed if (row.get("precision") or BASELINE) == BASELINE}
    return [(baseline[_key(row)], row) for row in timed
            if (row.get("precision") or BASELINE) != BASELINE and _key(row) in baseline]


def speedup(base: Row, lower: Row) -> float:
    """How many times faster the lower precision stepped: float32's median over its own."""
    return float(base["median_s"]) / float(lower["median_s"])


def section(rows: Sequence[Row], environment: dict[str, Any]) -> list[str]:
    found = pairs(rows)
    if not found:
        return []
    flags = environment.get("cpu_low_precision")
    machine = (f"This CPU has {', '.join(flags)}." if flags else
               "This CPU has no bfloat16 or float16 instructions (no avx512_bf16, amx_bf16 or avx512_fp16), so a"
               " framework's bfloat16 converts to float32 to compute." if flags is not None else "")
    lines = ["", "## Lower precision against float32", "",
             "Each cell beside the same cell in float32: float32's median step time over the lower precision's"
             " (above 1: the lower precision is faster). *slower*: the lower precision lost to float32, a"
             f" missing fast path where the CPU has the instructions. {machine}".rstrip(), ""]
    body = []
    for base, lower in found:
        gain = speedup(base, lower)
        body.append([lower["framework"], lower["workload"], lower["scenario"], str(lower["batch_size"]),
                     str(lower["threads"]), lower["precision"], format_seconds(base["median_s"]),
                     format_seconds(lower["median_s"]), f"{gain:.2f}x" + (" *slower*" if gain < 1 else ""),
                     lower.get("verification", "")])
    return lines + table(["framework", "workload", "scenario", "batch", "threads", "precision", "float32",
                          "lower", "speed-up", "verify"], body)
