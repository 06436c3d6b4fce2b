"""When compiling pays for itself: the step at which a compiled framework has caught up with its
eager counterpart, counting the one-off costs of building the network and of the first step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dlarena.frameworks.registry import FRAMEWORKS


def break_even_steps(compiled: dict[str, Any], eager: dict[str, Any]) -> float | None:
    """Steps after which ``compiled`` has spent less time in total than ``eager``; inf if never.

    Total time after n steps: build + first step + (n - 1) x median step. None where a figure is
    missing.
    """
    figures = [row.get(key) for row in (compiled, eager) for key in ("build_s", "first_step_s", "median_s")]
    numbers = [float(value) for value in figures if value is not None]
    if len(numbers) != len(figures):
        return None
    build_c, first_c, step_c, build_e, first_e, step_e = numbers
    head_start = (build_c + first_c - step_c) - (build_e + first_e - step_e)
    if head_start <= 0:
        return 0.0
    saving = step_e - step_c
    # rounded first, so that float noise does not add a step at an exact multiple
    return math.inf if saving <= 0 else math.ceil(round(head_start / saving, 6))


def annotate_break_even(rows: Sequence[dict[str, Any]]) -> None:
    """Add ``break_even_steps`` to each ok row of a compiled framework whose eager twin ran the same cell."""
    def key(row: dict[str, Any], framework: str) -> tuple[Any, ...]:
        return (framework, row["workload"], row["scenario"], row["device"], row["precision"], row["batch_size"],
                row["threads"])

    ok = {key(row, row["framework"]): row for row in rows if row["status"] == "ok"}
    for row in rows:
        info = FRAMEWORKS.get(row["framework"])
        counterpart = info.eager_counterpart if info else None
        eager = ok.get(key(row, counterpart)) if counterpart else None
        row["break_even_steps"] = break_even_steps(row, eager) if eager and row["status"] == "ok" else None
        row["eager_counterpart"] = counterpart if eager else None
