"""Shared fixtures. The test-only fault frameworks are switched on before dlarena is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["DLARENA_FAULT_FRAMEWORKS"] = "1"


@pytest.fixture(autouse=True)
def private_machine_lock(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own measuring lock: tests must not wait for a run elsewhere on this machine.
    And its own record of verify's verdicts: a test must not see (or leave) verdicts of another."""
    # The lock beside tmp_path, not in it: a test may check that a command wrote nothing there.
    monkeypatch.setenv("DLARENA_LOCK", str(tmp_path_factory.mktemp("lock") / "measuring.lock"))
    monkeypatch.setenv("DLARENA_VERDICTS", str(tmp_path / "verdicts" / "verifications.db"))

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the real `dlarena` command in a subprocess, in a scratch folder."""

    def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dlarena.cli", *args], cwd=tmp_path, capture_output=True, text=True,
            timeout=timeout, env={**os.environ, **(env or {})},
        )

    return run
