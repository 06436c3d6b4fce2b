"""Scaling efficiency of data-parallel cells: pairing each with its one-replica counterparts."""

from __future__ import annotations

from typing import Any

import pytest

from dlarena.measure.scaling import scaling


def _row(replicas: int, batch: int, median_s: float | None, status: str = "ok", **axes: Any) -> dict[str, Any]:
    return {"framework": "torch", "workload": "karmanov-cnn-small", "scenario": "train-dp", "device": "cpu",
            "precision": "float32", "threads": 1, "node": None, "replicas": replicas, "batch_size": batch,
            "median_s": median_s, "status": status, **axes}


def test_weak_and_strong_efficiency_against_the_one_replica_cells() -> None:
    rows = [_row(1, 32, 0.100), _row(1, 64, 0.200), _row(2, 64, 0.125), _row(2, 32, 0.0625)]
    found = {item.row["batch_size"]: item for item in scaling(rows)}
    # 2 replicas at 64 against 1 at 32 (the same per-replica batch): 0.100 / 0.125
    assert found[64].weak == pytest.approx(0.8)
    # 2 replicas at 64 against 1 at 64 (the same global batch): 0.200 / (2 * 0.125)
    assert found[64].strong == pytest.approx(0.8)
    # at 32 each replica has 16: no one-replica cell at 16, so no weak figure; strong: 0.100 / (2 * 0.0625)
    assert found[32].weak is None and found[32].strong == pytest.approx(0.8)


def test_only_the_same_framework_configuration_and_node_pair_up() -> None:
    rows = [_row(1, 32, 0.1, framework="jax"), _row(1, 32, 0.1, threads=2), _row(1, 32, 0.1, node="b"),
            _row(1, 32, 0.1, precision="bfloat16"), _row(2, 64, 0.2)]
    assert scaling(rows) == []


def test_cells_without_a_time_give_no_figure() -> None:
    # the one-replica cell at the per-replica batch failed, the two-replica cell at 32 ran out of memory
    rows = [_row(1, 32, None, status="failed"), _row(2, 64, 0.125), _row(1, 16, 0.05), _row(2, 32, None, "oom")]
    assert scaling(rows) == []
    (only,) = scaling([*rows, _row(2, 32, 0.04)])  # now 2 at 32 pairs with 1 at 16 (weak)
    assert only.row["batch_size"] == 32 and only.weak == pytest.approx(1.25) and only.strong is None
    assert scaling([_row(1, 32, 0.1), _row(2, 64, 0.1, scenario="train")]) == []
