"""Scaling efficiency of data-parallel training (the `train-dp` scenario), from a run's timed cells.

A `train-dp` cell trains one step over ``replicas`` processes with its ``batch_size`` (the global
batch) split evenly among them. Against the one-replica cell of the same framework and configuration:

- weak scaling keeps each replica's batch: N replicas at a global batch N*b against one at b. Ideal:
  the same step time with N times the samples, so efficiency = T1(b) / TN(N*b).
- strong scaling keeps the global batch: N replicas at B against one at B. Ideal: N times faster,
  so efficiency = T1(B) / (N * TN(B)).

Both are 1 for perfect scaling and fall with the time the replicas spend communicating or waiting.
The figures are medians' ratios, so they carry the cells' own uncertainty; this module only pairs
the cells and divides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlarena.spec.workload import DATA_PARALLEL_SCENARIO

# The axes that must match between a cell and its one-replica counterpart, besides the batch.
PAIRED_AXES = ("framework", "workload", "device", "precision", "threads", "node")


@dataclass(frozen=True)
class Scaling:
    """One multi-replica cell against its one-replica counterparts."""

    row: Mapping[str, Any]  # the N-replica cell
    replicas: int
    weak: float | None  # None: no one-replica cell at the per-replica batch
    strong: float | None  # None: no one-replica cell at the global batch


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(axis) for axis in PAIRED_AXES)


def _timed(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("median_s") is not None and row["median_s"] > 0


def scaling(rows: Sequence[Mapping[str, Any]]) -> list[Scaling]:
    """Every timed `train-dp` cell of more than one replica with its weak and strong efficiency, in the
    rows' order; a cell with neither counterpart is left out."""
    data_parallel = [row for row in rows if row.get("scenario") == DATA_PARALLEL_SCENARIO and _timed(row)]
    single = {(*_key(row), row["batch_size"]): float(row["median_s"])
              for row in data_parallel if int(row.get("replicas") or 1) == 1}
    found = []
    for row in data_parallel:
        replicas = int(row.get("replicas") or 1)
        if replicas == 1:
            continue
        step = float(row["median_s"])
        per_replica = single.get((*_key(row), row["batch_size"] // replicas))
        whole = single.get((*_key(row), row["batch_size"]))
        weak = per_replica / step if per_replica is not None else None
        strong = whole / (replicas * step) if whole is not None else None
        if weak is not None or strong is not None:
            found.append(Scaling(row, replicas, weak, strong))
    return found
