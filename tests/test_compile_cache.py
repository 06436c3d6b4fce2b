"""Compile caches: a cold cell compiles from nothing in every process, a shared one may reuse code.

Without this control a compiled framework's first step depends on what ran on the machine before
(torch-compile fcn5-small: 29.7 s from an empty Inductor cache, 2.8 s from a warm one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.measure.aggregate import compile_cache_figures
from dlarena.plan.cell import Cell, Measurement
from dlarena.report.markdown import _first_step
from dlarena.worker import COMPILE_CACHE_VARIABLES, isolate_compile_caches


def test_a_cold_cell_points_every_cache_into_an_empty_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users-cache"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/somewhere")
    record, folder = isolate_compile_caches("cold", str(tmp_path))
    assert folder is not None and Path(folder).parent == tmp_path and not any(Path(folder).iterdir())
    for variable in COMPILE_CACHE_VARIABLES:
        assert os.environ[variable].startswith(folder)
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2"  # the user's other flags stay
    assert record == {"mode": "cold", "emptied": sorted(COMPILE_CACHE_VARIABLES),
                      "removed": ["JAX_COMPILATION_CACHE_DIR", "TF_XLA_FLAGS --tf_xla_persistent_cache_directory"]}


def test_a_shared_cell_leaves_the_frameworks_caches_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users-cache"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    assert isolate_compile_caches("shared", str(tmp_path)) == ({"mode": "shared"}, None)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users-cache")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax-cache")
    assert list(tmp_path.iterdir()) == []


def test_the_worker_records_the_mode_and_removes_its_private_cache(tmp_path: Path) -> None:
    cell = Cell("fault-none", "fcn5-small", "infer", batch_size=2, threads=1)
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json(), "--out", str(out)],
                   capture_output=True, text=True, check=True)
    result = json.loads(out.read_text())
    assert result["status"] == "ok"
    assert result["compile_cache"]["mode"] == "cold"
    assert [path.name for path in tmp_path.iterdir()] == ["result.json"]  # the private cache is gone


def test_cache_hits_are_summed_and_mark_the_first_step() -> None:
    def process(mode: str, hits: int | None) -> dict[str, object]:
        details = {} if hits is None else {"compile_cache": {"fxgraph_cache_hit": hits, "fxgraph_cache_miss": 1}}
        return {"compile_cache": {"mode": mode}, "parity": {"details": details}}

    assert compile_cache_figures([process("cold", 0), process("cold", 0)]) == {
        "compile_cache": "cold", "compile_cache_hits": 0}
    assert compile_cache_figures([process("shared", 0), process("shared", 2)]) == {
        "compile_cache": "shared", "compile_cache_hits": 2}
    assert compile_cache_figures([process("shared", None)]) == {"compile_cache": "shared"}  # eager: no counters
    assert compile_cache_figures([{}]) == {}  # results stored before the mode was recorded
    row = {"first_step_s": 2.8, "summary_data": json.dumps({"compile_cache_hits": 2})}
    assert _first_step(row).endswith("(cached)")
    assert not _first_step({**row, "summary_data": json.dumps({"compile_cache_hits": 0})}).endswith("(cached)")


@pytest.mark.slow
@pytest.mark.skipif(not FRAMEWORKS["torch-compile"].is_installed(), reason="torch is not installed")
def test_torch_compile_reuses_a_warm_cache_only_when_shared(tmp_path: Path) -> None:
    """Inductor's own counters, read back by the torch module, show where compiled code came from."""
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "machine-cache")}

    def counters(mode: str) -> dict[str, int]:
        measurement = Measurement(warmup_steps=0, min_steps=1, min_time_s=0.0, compile_cache=mode)
        cell = Cell("torch-compile", "fcn5-small", "infer", batch_size=2, threads=1, measurement=measurement)
        finished = subprocess.run([sys.executable, "-m", "dlarena.worker", "--cell", cell.to_json()],
                                  capture_output=True, text=True, check=True, env=environment)
        result = json.loads(finished.stdout)
        assert result["status"] == "ok", result.get("message")
        assert result["compile_cache"]["mode"] == mode
        cache: dict[str, int] = result["parity"]["details"]["compile_cache"]
        return cache

    counters("shared")  # compiles into the machine's cache (a miss unless it was warm already)
    warm = counters("shared")
    assert warm["fxgraph_cache_hit"] > 0 and warm["fxgraph_cache_miss"] == 0
    cold = counters("cold")
    assert cold["fxgraph_cache_hit"] == 0 and cold["fxgraph_cache_miss"] > 0
