"""Create, find, list and remove the managed environments, and launch workers in them.

An environment lives in ``<cache>/envs/NAME-PINHASH/`` (the pin hash covers the constraints file,
the packages, the steps, the interpreter range and the variables: change a pin and the environment
is a new one, never a silently altered old one). It is built in a ``.partial`` folder that is
renamed into place only once complete, so an interrupted setup leaves nothing half-made that looks
ready. Its ``environment.json`` records what it holds: interpreter, NumPy, every package version,
size and creation time; results carry its identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlarena
import dlarena_runner
from dlarena.data.cache import cache_base, size_on_disk
from dlarena.environments import ENV_PLACEHOLDER, ENVIRONMENTS, EnvironmentSpec, debs, environment_spec
from dlarena.errors import DlarenaError
from dlarena_runner import process

ENVS_VARIABLE = "DLARENA_ENVS"  # moves the environments' folder (tests, CI, a larger disk)
RECORD_FILE = "environment.json"
RECORD_SCHEMA = 1
WORKER_PATH = "worker-path"  # holds only links to dlarena's packages: the worker's PYTHONPATH
# The packages a worker imports, linked into worker-path: dlarena_runner (Python 3.6+, see its docstring)
# and, until the worker side moves behind it, the whole of dlarena.
WORKER_PACKAGES = (dlarena, dlarena_runner)
# Set for every worker in a managed environment: its identity, stored with each result.
IDENTITY_VARIABLE = process.IDENTITY_VARIABLE
PIN_HASH_LENGTH = 12
# How long one pip step may take before setup gives up: the legacy set downloads ~150 MB and builds
# Chainer from source (45 s here); a slow mirror can take ten times that.
INSTALL_TIMEOUT_S = 1800.0
# Lines of pip's output that a failed setup shows: enough for the error and what led to it.
ERROR_TAIL_LINES = 12


class EnvironmentError_(DlarenaError):
    """An environment that cannot be made or used: the one sentence says why and what to run."""


def environments_home() -> Path:
    """``$DLARENA_ENVS``, else ``$XDG_CACHE_HOME/dlarena/envs``, else ``~/.cache/dlarena/envs``."""
    if os.environ.get(ENVS_VARIABLE):
        return Path(os.environ[ENVS_VARIABLE]).expanduser()
    return cache_base() / "envs"


def pin_hash(spec: EnvironmentSpec) -> str:
    fields: dict[str, Any] = {"constraints": spec.constraints_text(), "packages": spec.packages, "steps": spec.steps,
                              "python": spec.python, "variables": spec.variables}
    # Fields added later enter only when set, so that an environment without them keeps its hash.
    if spec.bootstrap:
        fields["bootstrap"] = spec.bootstrap
    if spec.links:
        fields["links"] = [[link.path, link.target, link.package] for link in spec.links]
    if spec.debs:
        fields["debs"] = [spec.debian_release, spec.debs_text()]
    if spec.paths:
        fields["paths"] = spec.paths
    material = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:PIN_HASH_LENGTH]


def folder(spec: EnvironmentSpec) -> Path:
    return environments_home() / f"{spec.name}-{pin_hash(spec)}"


def installed_record(name: str) -> dict[str, Any] | None:
    """The record of environment ``name`` at its current pins, or None when it is not set up."""
    spec = environment_spec(name)
    path = folder(spec) / RECORD_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("schema") != RECORD_SCHEMA or not Path(record.get("python_executable", "")).exists():
        return None
    return record


def identity(record: dict[str, Any]) -> str:
    """What a result records of its environment: ``legacy-3f2a... python 3.11.7 numpy 1.23.5``."""
    return f"{record['name']}-{record['pin_hash']} python {record['python']} numpy {record['numpy']}"


# --------------------------------------------------------------------------------------------------
# Interpreters


def _version_of(executable: str) -> tuple[int, int] | None:
    try:
        output = subprocess.run([executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, _, minor = output.strip().partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def _pyenv_interpreters(major: int, minor: int) -> list[Path]:
    root = _pyenv_root() / "versions"
    pattern = re.compile(rf"^{major}\.{minor}\.\d+$")  # a release, not a -dev or a virtualenv of pyenv's
    found = [path / "bin" / f"python{major}.{minor}" for path in sorted(root.glob(f"{major}.{minor}.*"))
             if pattern.match(path.name)] if root.is_dir() else []
    return [path for path in found if path.exists()]


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _uv_root() -> Path:
    """Where ``uv python install`` puts interpreters: ``$UV_PYTHON_INSTALL_DIR``, else
    ``$XDG_DATA_HOME/uv/python``, else ``~/.local/share/uv/python`` (uv's documentation)."""
    if os.environ.get("UV_PYTHON_INSTALL_DIR"):
        return Path(os.environ["UV_PYTHON_INSTALL_DIR"])
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data) if data and Path(data).is_absolute() else Path.home() / ".local" / "share") / "uv" / "python"


def _uv_interpreters(major: int, minor: int) -> list[Path]:
    root = _uv_root()
    found = [path / "bin" / f"python{major}.{minor}" for path in sorted(root.glob(f"cpython-{major}.{minor}.*"))]
    return [path for path in found if path.exists()]


def interpreter(major: int, minor: int) -> str | None:
    """An interpreter of Python ``major.minor``: this one, one on PATH, one of pyenv's or one of uv's;
    None if none."""
    candidates: list[str] = []
    if sys.version_info[:2] == (major, minor):
        candidates.append(getattr(sys, "_base_executable", sys.executable))
    on_path = shutil.which(f"python{major}.{minor}")
    if on_path:
        candidates.append(on_path)
    candidates += [str(path) for path in _pyenv_interpreters(major, minor) + _uv_interpreters(major, minor)]
    for candidate in candidates:
        if _version_of(candidate) == (major, minor):
            return candidate
    return None


# The oldest Python that `uv python install` offers (its downloads list nothing older).
UV_OLDEST_PYTHON = (3, 8)


def missing_interpreter_message(spec: EnvironmentSpec) -> str:
    """The one sentence for an environment whose interpreter is nowhere: which, where dlarena looked,
    and how to get one."""
    wanted = " to ".join(dict.fromkeys(f"{major}.{minor}" for major, minor in spec.python))
    newest = spec.python[1]
    how = f"`pyenv install {newest[0]}.{newest[1]}`"
    if newest >= UV_OLDEST_PYTHON:
        how += f" or `uv python install {newest[0]}.{newest[1]}`"
    return (f"environment {spec.name} needs Python {wanted}, and no such interpreter was found: dlarena runs on "
            f"{sys.version_info[0]}.{sys.version_info[1]}, and it looked for python{newest[0]}.{newest[1]} on "
            f"PATH, in pyenv ({_pyenv_root() / 'versions'}) and among uv's interpreters ({_uv_root()}); install "
            f"one ({how}) and run `dlarena env setup {spec.name}` again")


def find_interpreter(spec: EnvironmentSpec) -> str:
    """The newest interpreter in the environment's range: this one, one on PATH, pyenv's or uv's."""
    for major, minor in spec.python_versions():
        found = interpreter(major, minor)
        if found is not None:
            return found
    raise EnvironmentError_(missing_interpreter_message(spec))


# --------------------------------------------------------------------------------------------------
# Setup and removal


def _run(command: list[str], what: str, spec: EnvironmentSpec) -> None:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EnvironmentError_(f"environment {spec.name}: {what} took more than {INSTALL_TIMEOUT_S:.0f} s; "
                                "nothing was kept") from None
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-ERROR_TAIL_LINES:])
        raise EnvironmentError_(f"environment {spec.name}: {what} failed (exit {completed.returncode}); nothing was "
                                f"kept. Its last lines:\n{tail}")


def _installer(python: Path) -> list[str]:
    """``uv pip install`` where uv is installed (several times faster), else the environment's pip."""
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--python", str(python)]
    return [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def _link_worker(target: Path) -> Path:
    """``target/worker-path/dlarena`` and ``.../dlarena_runner`` -> this checkout's packages (each
    relinked when it moved)."""
    path = target / WORKER_PATH
    path.mkdir(exist_ok=True)
    for module in WORKER_PACKAGES:
        package = Path(str(module.__file__)).resolve().parent
        link = path / module.__name__
        if link.is_symlink() and Path(os.readlink(link)) == package:
            continue
        temporary = path / f"{module.__name__}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(package, target_is_directory=True)
        os.replace(temporary, link)  # atomic: a worker starting now sees the old link or the new one
    return path


# What setup records of an environment, run by its interpreter (Python 3.6 syntax: the oldest one).
# importlib.metadata is 3.8+; before it, setuptools' pkg_resources, with each version read from the
# distribution's own metadata file: pkg_resources takes it from the folder's name, and CNTK's
# 2.7.post2 wheel ships a folder named cntk-2.7.dist-info.
_PROBE = """
import json, platform, sys, sysconfig
import numpy
try:
    import importlib.metadata as metadata
    packages = {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}
except ImportError:
    import email.parser, pkg_resources
    packages = {}
    for d in pkg_resources.working_set:
        names = [name for name in ("METADATA", "PKG-INFO") if d.has_metadata(name)]
        headers = email.parser.Parser().parsestr(d.get_metadata(names[0]) if names else "", headersonly=True)
        packages[headers.get("Name") or d.project_name] = headers.get("Version") or d.version
print(json.dumps({"python": platform.python_version(), "numpy": numpy.__version__, "packages": packages,
                  "executable": sys.executable, "site_packages": sysconfig.get_paths()["purelib"]}))
"""


def _require_link_targets(spec: EnvironmentSpec) -> None:
    """Refuse, before anything is downloaded, an environment whose system libraries are missing."""
    for link in spec.links:
        if not Path(link.target).exists():
            raise EnvironmentError_(
                f"environment {spec.name} needs {link.target}, which is missing: install the system package "
                f"{link.package} (`apt-get install {link.package}`) and run `dlarena env setup {spec.name}` again")


def _make_links(spec: EnvironmentSpec, site_packages: Path) -> None:
    for link in spec.links:
        path = site_packages / link.path
        if not path.parent.is_dir():
            raise EnvironmentError_(f"environment {spec.name}: the folder of the link {link.path} is not in "
                                    f"{site_packages}; nothing was kept")
        path.unlink(missing_ok=True)
        path.symlink_to(link.target)


def expand(variables: dict[str, str], where: Path) -> dict[str, str]:
    """An environment's variables with ``{env}`` replaced by its folder ``where``."""
    return {key: value.replace(ENV_PLACEHOLDER, str(where)) for key, value in variables.items()}


def _unpack_debian(spec: EnvironmentSpec, partial: Path, report: Callable[[str], None]) -> int:
    """The environment's pinned Debian packages unpacked into ``partial/debian``; how many."""
    try:
        pins = debs.read_pins(spec.debs_text())
        report(f"{spec.name}: downloading and unpacking {len(pins)} Debian {spec.debian_release} packages")
        debs.fetch(pins, spec.debian_release, partial / debs.PREFIX)
    except debs.DebianError as error:
        raise EnvironmentError_(f"environment {spec.name}: {error}; nothing was kept") from None
    return len(pins)


def _write_paths(spec: EnvironmentSpec, partial: Path, site_packages: Path) -> None:
    """A .pth in site-packages naming the spec's folders, relative (the folder is renamed after)."""
    if spec.paths:
        lines = [os.path.relpath(partial / path, site_packages) for path in spec.paths]
        (site_packages / f"dlarena-{spec.name}.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")


def setup(name: str, report: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Create environment ``name`` at its current pins (nothing to do when it is there); its record."""
    spec = environment_spec(name)
    existing = installed_record(name)
    if existing is not None:
        report(f"{name}: present in {folder(spec)}")
        return existing
    interpreter = find_interpreter(spec)
    _require_link_targets(spec)
    target = folder(spec)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report(f"{name}: creating {target} with {interpreter}")
    try:
        debian_packages = _unpack_debian(spec, partial, report) if spec.debs else 0
        _run([interpreter, "-m", "venv", str(partial)], "creating the virtual environment", spec)
        python = partial / "bin" / "python"
        constraints = partial / "constraints.txt"
        constraints.write_text(spec.constraints_text(), encoding="utf-8")
        installer = _installer(python)
        if spec.bootstrap:
            report(f"{name}: installing {', '.join(spec.bootstrap)} first")
            _run([*installer, "-c", str(constraints), *spec.bootstrap], "installing " + ", ".join(spec.bootstrap),
                 spec)
        report(f"{name}: installing {', '.join(spec.packages)}")
        _run([*installer, "-c", str(constraints), *spec.packages], "installing " + ", ".join(spec.packages), spec)
        for step in spec.steps:
            report(f"{name}: installing {' '.join(step)}")
            _run([*installer, "-c", str(constraints), *step], "installing " + " ".join(step), spec)
        probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=300)
        if probe.returncode != 0:
            raise EnvironmentError_(f"environment {name}: its interpreter cannot import NumPy: "
                                    f"{probe.stderr.strip().splitlines()[-1:]}")
        facts = json.loads(probe.stdout)
        _make_links(spec, Path(facts["site_packages"]))
        _write_paths(spec, partial, Path(facts["site_packages"]))
        _link_worker(partial)
        record = {
            "schema": RECORD_SCHEMA, "name": name, "pin_hash": pin_hash(spec), "python": facts["python"],
            "numpy": facts["numpy"], "packages": facts["packages"], "base_interpreter": interpreter,
            "python_executable": str(target / "bin" / "python"), "created_at": datetime.now(UTC).isoformat(
                timespec="seconds"), "setup_s": round(time.perf_counter() - start, 1),
            "size_bytes": size_on_disk(partial), "dlarena": dlarena.__version__,
        }
        if spec.debs:
            record["debian"] = {"release": spec.debian_release, "packages": debian_packages}
        (partial / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _link_worker(target)  # the link's folder moved with the rename; the link itself is absolute
    report(f"{name}: ready in {record['setup_s']:.0f} s, {record['size_bytes'] / 1e6:.0f} MB")
    return record


def remove(name: str) -> list[Path]:
    """Delete every folder of environment ``name`` (all pin hashes); the folders removed."""
    environment_spec(name)  # an unknown name is an error, not a silent no-op
    home = environments_home()
    removed = sorted(path for path in home.glob(f"{name}-*") if path.is_dir()) if home.is_dir() else []
    for path in removed:
        shutil.rmtree(path)
    return removed


def status() -> list[dict[str, Any]]:
    """Every declared environment: present or not, where, interpreter, NumPy, size, frameworks served."""
    from dlarena.frameworks.registry import FRAMEWORKS

    rows = []
    for name, spec in ENVIRONMENTS.items():
        record = installed_record(name)
        home = environments_home()
        current = folder(spec)
        stale = sorted(str(path) for path in home.glob(f"{name}-*") if path.is_dir() and path != current) \
            if home.is_dir() else []
        rows.append({
            "name": name, "description": spec.description, "present": record is not None,
            "folder": str(current), "python": record["python"] if record else None,
            "numpy": record["numpy"] if record else None, "size_bytes": record["size_bytes"] if record else None,
            "setup_s": record["setup_s"] if record else None, "pin_hash": pin_hash(spec),
            "frameworks": sorted(info.name for info in FRAMEWORKS.values() if info.environment == name),
            "stale_folders": stale, "setup_command": f"dlarena env setup {name}",
        })
    return rows


def launch(name: str, require: bool = True) -> tuple[str, dict[str, str]]:
    """The interpreter and the variables a worker in environment ``name`` is started with.

    Without ``require``, an environment not set up gives the interpreter it would have (for the
    command stored with an ``unavailable`` result) instead of an error."""
    spec = environment_spec(name)
    record = installed_record(name)
    if record is None:
        if require:
            raise EnvironmentError_(f"environment {name} is not set up: run `dlarena env setup {name}`")
        return str(folder(spec) / "bin" / "python"), expand(spec.variables, folder(spec))
    worker_path = _link_worker(folder(spec))
    return record["python_executable"], {"PYTHONPATH": str(worker_path), IDENTITY_VARIABLE: identity(record),
                                         **expand(spec.variables, folder(spec))}
