"""Managed environments: where they live, what a missing one does to a cell, setup that fails
leaving nothing behind, and workers that really run on the environment's interpreter and NumPy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from dlarena.environments import ENVIRONMENTS, EnvironmentSpec, manage
from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.orchestrate.executor import Execution, LocalExecutor, worker_command
from dlarena.orchestrate.orchestrator import execute_cell
from dlarena.plan.cell import Cell, Measurement

LEGACY_FRAMEWORKS = sorted(name for name, info in FRAMEWORKS.items() if info.environment == "legacy")
STEPS = Measurement(warmup_steps=1, min_steps=2, min_time_s=0.05, compile_cache="shared")


def _dlarena(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlarena.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(manage.ENVS_VARIABLE, str(tmp_path))
    return tmp_path


def _write_record(spec: EnvironmentSpec, numpy_version: str) -> Path:
    folder = manage.folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"schema": manage.RECORD_SCHEMA, "name": spec.name, "pin_hash": manage.pin_hash(spec),
              "python": "3.11.7", "numpy": numpy_version, "packages": {"chainer": "7.8.1", "numpy": numpy_version},
              "python_executable": sys.executable, "size_bytes": 1, "setup_s": 1.0}
    (folder / manage.RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
    return folder


def test_every_framework_names_a_declared_environment() -> None:
    for info in FRAMEWORKS.values():
        assert info.environment is None or info.environment in ENVIRONMENTS, info.name


def test_a_cell_whose_environment_is_missing_is_unavailable_with_the_setup_command(empty_home: Path) -> None:
    cell = Cell(LEGACY_FRAMEWORKS[0], "fcn5-small", "infer", batch_size=2, threads=1, measurement=STEPS)
    result = execute_cell(cell, 60.0, LocalExecutor())
    assert result.status == "unavailable"
    assert "dlarena env setup legacy" in result.message
    assert result.command[0] == "env" and result.command[-5].endswith("/bin/python")  # the command it would run


def test_unknown_environment_names_are_one_sentence(empty_home: Path) -> None:
    for action in ("setup", "remove"):
        completed = _dlarena("env", action, "legacyy")
        assert completed.returncode == 2
        assert completed.stderr.strip().splitlines() == [
            "dlarena: error: unknown environment 'legacyy' (did you mean 'legacy'?); valid environments: "
            + ", ".join(sorted(ENVIRONMENTS))]
    assert not any(empty_home.iterdir())


def test_a_missing_interpreter_is_one_sentence_naming_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = EnvironmentSpec(name="ancient", description="", python=((3, 0), (3, 0)), constraints="legacy.txt",
                           packages=("numpy",))
    monkeypatch.setitem(ENVIRONMENTS, "ancient", spec)
    with pytest.raises(manage.EnvironmentError_, match=r"needs Python 3\.0, and no such interpreter.*pyenv install"):
        manage.find_interpreter(spec)


def test_without_its_interpreter_the_setup_and_the_cells_say_where_dlarena_looked(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A machine with no Python 3.6 anywhere: an empty pyenv, an empty uv folder, a PATH without it.
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "uv"))
    monkeypatch.setenv("PATH", os.pathsep.join(str(Path(path)) for path in ("/usr/bin", "/bin")))
    if shutil.which("python3.6"):
        pytest.skip("this machine has python3.6 in /usr/bin")
    completed = _dlarena("env", "setup", "cntk")
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    [sentence] = completed.stderr.strip().splitlines()
    for part in ("needs Python 3.6", "PATH", str(tmp_path / "pyenv" / "versions"), str(tmp_path / "uv"),
                 "pyenv install 3.6", "dlarena env setup cntk"):
        assert part in sentence
    assert "uv python install" not in sentence  # uv offers nothing older than 3.8
    assert not list(empty_home.rglob("cntk-*"))
    assert "no such interpreter was found" in FRAMEWORKS["cntk"].unavailable_message()


def test_a_failed_setup_leaves_nothing(empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    constraints = tmp_path / "pins.txt"
    constraints.write_text("numpy==1.23.5\n", encoding="utf-8")
    version = sys.version_info
    spec = EnvironmentSpec(name="broken", description="", python=((3, version.minor), (3, version.minor)),
                           constraints=str(constraints), packages=("numpy",))
    monkeypatch.setitem(ENVIRONMENTS, "broken", spec)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing to install, without the network
    with pytest.raises(manage.EnvironmentError_, match=r"installing numpy failed .*nothing was kept"):
        manage.setup("broken")
    assert sorted(path.name for path in empty_home.iterdir()) == ["pins.txt"]
    assert manage.installed_record("broken") is None


def test_identity_enters_the_versions_that_key_a_cell(empty_home: Path) -> None:
    spec = ENVIRONMENTS["legacy"]
    info = FRAMEWORKS[LEGACY_FRAMEWORKS[0]]
    assert not info.is_installed() and info.versions() == {}
    _write_record(spec, "1.23.5")
    assert info.is_installed()
    first = info.versions()
    assert first[f"environment {spec.name}"].endswith("numpy 1.23.5")
    cell = Cell(info.name, "fcn5-small", "infer", batch_size=2, threads=1)
    _write_record(spec, "1.23.4")
    assert cell.key("c", first) != cell.key("c", info.versions())


def test_a_launch_links_both_worker_packages_to_this_checkout_and_relinks_a_moved_one(
        empty_home: Path, tmp_path: Path) -> None:
    import dlarena
    import dlarena_runner

    spec = ENVIRONMENTS["legacy"]
    _write_record(spec, "1.23.5")
    _, variables = manage.launch(spec.name)
    worker_path = Path(variables["PYTHONPATH"])
    packages = {module.__name__: Path(module.__file__ or "").resolve().parent for module in (dlarena, dlarena_runner)}
    assert sorted(path.name for path in worker_path.iterdir()) == sorted(packages)
    for name, package in packages.items():
        assert (worker_path / name).resolve() == package
    moved = tmp_path / "an-older-checkout"  # the runner's link left pointing where a checkout used to be
    moved.mkdir()
    (worker_path / "dlarena_runner").unlink()
    (worker_path / "dlarena_runner").symlink_to(moved, target_is_directory=True)
    manage.launch(spec.name)
    assert (worker_path / "dlarena_runner").resolve() == packages["dlarena_runner"]


def test_list_shows_older_pins_and_remove_deletes_every_folder(empty_home: Path) -> None:
    stale = empty_home / "legacy-000000000000"
    stale.mkdir()
    row = next(row for row in manage.status() if row["name"] == "legacy")
    assert not row["present"] and row["stale_folders"] == [str(stale)]
    assert set(LEGACY_FRAMEWORKS) <= set(row["frameworks"])
    completed = _dlarena("env", "list")
    assert completed.returncode == 0 and "older pins, unused" in completed.stdout
    assert manage.remove("legacy") == [stale] and not stale.exists()


@pytest.mark.slow
@pytest.mark.skipif(manage.installed_record("legacy") is None, reason="the legacy environment is not set up")
def test_a_worker_runs_on_the_environments_interpreter_and_numpy() -> None:
    record = manage.installed_record("legacy")
    assert record is not None
    cell = Cell(LEGACY_FRAMEWORKS[0], "fcn5-small", "infer", batch_size=2, threads=1, measurement=STEPS)
    command = worker_command(cell)
    assert command[0] == "env" and record["python_executable"] in command
    result = execute_cell(cell, 600.0, LocalExecutor())
    assert result.status in ("ok", "unsupported"), f"{result.message}\n{result.stderr_tail}"
    environment = result.data["environment"]
    assert environment["numpy"] == record["numpy"] and environment["python"] == record["python"]
    assert environment["managed"] == manage.identity(record)


class ForeignWorker:
    """An executor whose worker is another dlarena's: a real process printing a result of schema 0."""

    slots = 1
    remote = False

    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution:
        text = json.dumps({"schema": 0, "status": "ok", "samples_s": [0.1, 0.1]})
        command = [sys.executable, "-c", f"print({text!r})"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        return Execution(command=command, data=json.loads(completed.stdout), exit_code=completed.returncode,
                         timed_out=False, output_tail="", wall_s=0.0)


def test_a_result_of_another_schema_is_refused_not_mixed() -> None:
    cell = Cell("torch", "fcn5-small", "infer", batch_size=2, threads=1)
    result = execute_cell(cell, 60.0, ForeignWorker()) if FRAMEWORKS["torch"].is_installed() else None
    if result is None:
        pytest.skip("torch is not installed")
    assert result.status == "failed" and "schema 0" in result.message and not result.data


def test_a_layer_the_registry_says_a_framework_lacks_is_unsupported_without_a_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The registry's declaration decides before any process starts (the gate would hold a worker)."""
    gate = tmp_path / "never-opened"
    monkeypatch.setenv("DLARENA_FAULT_GATE", str(gate))
    info = replace(FRAMEWORKS["fault-gate"], unsupported_layers={"GRU": "its GRU puts the reset gate elsewhere"})
    monkeypatch.setitem(FRAMEWORKS, "fault-gate", info)
    result = execute_cell(Cell("fault-gate", "karmanov-gru-small", "train", batch_size=2, threads=1), 600.0,
                          LocalExecutor())
    assert result.status == "unsupported" and result.exit_code is None and result.wall_s == 0.0
    assert result.message == "fault-gate cannot express GRU: its GRU puts the reset gate elsewhere"


def test_a_transformer_on_a_framework_that_does_not_build_one_is_unsupported_without_a_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """builds_transformers decides before any process starts, as a lacking layer does (the gate would
    hold a worker), for a framework that declares no lacking layer besides."""
    monkeypatch.setenv("DLARENA_FAULT_GATE", str(tmp_path / "never-opened"))
    assert not FRAMEWORKS["fault-gate"].builds_transformers and not FRAMEWORKS["fault-gate"].unsupported_layers
    result = execute_cell(Cell("fault-gate", "gpt2-124m-small", "infer", batch_size=2, threads=1), 600.0,
                          LocalExecutor())
    assert result.status == "unsupported" and result.exit_code is None and result.wall_s == 0.0
    assert result.message.startswith("dlarena's fault-gate module does not build the transformer layers")
