"""Suites: named, versioned TOML lists of sweeps, expanded into cells.

A suite file holds top-level defaults and zero or more ``[[sweep]]`` tables; each sweep is the cross
product of its axes (frameworks x workloads x scenarios x devices x precisions x batch sizes x
threads). Without ``[[sweep]]`` tables the top level is the one sweep. Each cell is measured by
``repetitions`` worker processes. Example::

    name = "quick"
    version = 1
    description = "Small networks, a few minutes on a laptop"
    workloads = ["fcn5-small", "karmanov-cnn-small"]
    scenarios = ["train", "infer"]
    threads = "all"          # every power of two up to the core count, "max" (every core), or a list
    batch_sizes = [32]       # absent: each workload's default batch size
    repetitions = 3          # worker processes per cell: the pilot of a timing cell
    target_ci = 0.03         # then more, until the median's 95% interval is within 3% (0: the pilot only)
    max_processes = 6        #   or this many processes ran (measure/repetitions.py)
    time_budget_s = 600      # absent: none; past it no process beyond a pilot starts
    timeout_s = 300          # absent: 600 s a timing cell, an accuracy cell's from its recipe (plan/timeouts.py)

    [measurement]
    min_time_s = 0.5
    compile_cache = "cold"   # or "shared": the framework's own persistent cache (plan/cell.py)
    denormals = "default"    # or "flush": subnormal numbers flushed to zero where the framework can

    [[sweep]]                # training on real data to a test accuracy
    workloads = ["digits-mlp"]
    scenarios = ["accuracy"]
    repetitions = 5          # a sweep may set its own; for accuracy each process is another seed
    epochs = 40              # absent: the workload's published recipe (and target_accuracy likewise)
    target_accuracy = 0.97
"""

from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from dlarena.errors import DlarenaError, UnknownNameError
from dlarena.frameworks.precision import GPU_ONLY_REASON
from dlarena.frameworks.precision import PRECISIONS as PRECISION_KINDS
from dlarena.frameworks.precision import precision as precision_of
from dlarena.frameworks.registry import FRAMEWORKS, default_frameworks, precision_support
from dlarena.measure.repetitions import DEFAULT_MAX_PROCESSES, DEFAULT_TARGET_CI, Need
from dlarena.measure.stats import LATENCY_PERCENTILES, steps_for_percentile
from dlarena.plan.cell import COMPILE_CACHES, DENORMAL_MODES, Cell, Measurement
from dlarena.plan.timeouts import default_timeout_s
from dlarena.spec import SCENARIOS, TIMING_SCENARIOS
from dlarena.spec.catalogue import CATALOGUE
from dlarena.spec.workload import DATA_PARALLEL_SCENARIO
from dlarena.wording import counted

DEVICES: tuple[str, ...] = ("cpu", "cuda")
# Precisions a cell may ask for; each framework's registry entry says which of them it runs
# (FrameworkInfo.precisions), and planning refuses one that no selected framework runs.
PRECISIONS: tuple[str, ...] = tuple(PRECISION_KINDS)
DEFAULT_SUITE = "quick"
# Three processes per cell: the fewest that show whether one process was an outlier, at three times
# the cost of one; the bootstrap interval of the median resamples them (measure/stats.py).
DEFAULT_REPETITIONS = 3
# A cell may use this fraction of the machine's memory (with its children) before dlarena kills it
# as `oom`: a fifth stays for the system and the orchestrator, so that dlarena ends a runaway cell
# before the kernel's out-of-memory killer picks a victim of its own.
DEFAULT_MEMORY_FRACTION = 0.8

_AXES = ("frameworks", "workloads", "scenarios", "devices", "precisions", "batch_sizes", "threads", "replicas")
_TOP_KEYS = {
    "name", "version", "description", "timeout_s", "measurement", "repetitions", "memory_limit_gib", "sweep",
    "target_ci", "max_processes", "time_budget_s", *_AXES,
    "epochs", "target_accuracy",
}
_SWEEP_KEYS = {*_AXES, "timeout_s", "repetitions", "epochs", "target_accuracy", "latency"}


class SuiteError(DlarenaError):
    """A suite file or a command-line selection that cannot be planned."""


@dataclass(frozen=True)
class Sweep:
    """One cross product. ``None`` for an axis means its default (see ``Suite.cells``)."""

    frameworks: tuple[str, ...] | None = None
    workloads: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = TIMING_SCENARIOS
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("float32",)
    batch_sizes: tuple[int, ...] | None = None
    threads: tuple[int, ...] | str = "all"
    # The train-dp scenario's replica counts (each replica has ``threads`` cores of its own); the other
    # scenarios run one process.
    replicas: tuple[int, ...] = (1,)
    # None: derived per cell (plan/timeouts.py): the timing cells' limit, or one from the training recipe.
    timeout_s: float | None = None
    repetitions: int | None = None  # None: the suite's
    epochs: int | None = None  # accuracy cells; None: the workload's training recipe
    target_accuracy: float | None = None
    # A latency sweep: each inference cell times enough calls for its p99 (latency_measurement), at
    # every batch size, so that latency and throughput can be read off one curve.
    latency: bool = False


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    sweeps: tuple[Sweep, ...]
    measurement: Measurement = field(default_factory=Measurement)
    repetitions: int = DEFAULT_REPETITIONS
    memory_limit_gib: float | None = None  # None: DEFAULT_MEMORY_FRACTION of the machine's memory
    source: str = ""  # the TOML text it was read from, stored with each run
    need: Need = field(default_factory=Need)  # what timing cells need beyond their pilot

    def override(
        self, repetitions: int | None = None, memory_limit_gib: float | None = None,
        compile_cache: str | None = None, denormals: str | None = None, target_ci: float | None = None,
        max_processes: int | None = None, time_budget_s: float | None = None, **axes: Any,
    ) -> Suite:
        """The same suite with some axes replaced in every sweep (from the command line); None keeps one.

        Workloads and scenarios the suite already has select its sweeps rather than replace them, so
        that ``--workloads karmanov-cnn`` on ``karmanov2017`` runs that network's own sweeps (its
        timing and its training to accuracy) and not every sweep's settings on it; names the suite
        lacks replace the axis in every sweep (the suite's settings on other networks).
        """
        changes = {name: value for name, value in axes.items() if value is not None}
        sweeps = self.sweeps
        for axis in ("workloads", "scenarios"):
            chosen = changes.get(axis)
            if chosen and set(chosen) <= {name for sweep in sweeps for name in getattr(sweep, axis)}:
                del changes[axis]
                sweeps = tuple(_select(sweep, axis, chosen) for sweep in sweeps
                               if set(getattr(sweep, axis)) & set(chosen))
        if ("workloads" in changes or "scenarios" in changes) and "timeout_s" not in changes:
            # A suite's limit was set for its own networks and scenarios (the quick suite's 300 s for
            # small networks); the ones put in its place get the limit derived for them, unless
            # --timeout says otherwise (MNIST's CNN trained on the quick suite was killed at 300 s).
            changes["timeout_s"] = None
        sweeps = tuple(replace(sweep, **changes) for sweep in sweeps)
        if "workloads" in changes and axes.get("scenarios") is None:
            # Other networks on a suite: its training sweeps only for those that have real data.
            sweeps = tuple(sweep for sweep in sweeps if set(sweep.scenarios) != {"accuracy"}
                           or any(CATALOGUE[name].training for name in sweep.workloads if name in CATALOGUE))
        if repetitions is not None and repetitions < 1:
            raise SuiteError(f"repetitions must be at least 1, got {repetitions}")
        if memory_limit_gib is not None and memory_limit_gib <= 0:
            raise SuiteError(f"the memory limit must be a positive number of GiB, got {memory_limit_gib}")
        if repetitions is not None:  # the command line's count wins over every sweep's own
            sweeps = tuple(replace(sweep, repetitions=None) for sweep in sweeps)
        measurement = self.measurement
        if compile_cache is not None:
            measurement = replace(measurement, compile_cache=_compile_cache(compile_cache, "--compile-cache"))
        if denormals is not None:
            measurement = replace(measurement, denormals=_choice(denormals, "--denormals", "denormals", DENORMAL_MODES))
        need = _need(self.need.target_ci if target_ci is None else target_ci,
                     self.need.max_processes if max_processes is None else max_processes,
                     self.need.time_budget_s if time_budget_s is None else time_budget_s, None)
        return replace(self, sweeps=sweeps, repetitions=repetitions or self.repetitions,
                       memory_limit_gib=memory_limit_gib or self.memory_limit_gib, measurement=measurement,
                       need=need)

    def memory_limit_bytes(self) -> int:
        if self.memory_limit_gib is not None:
            return int(self.memory_limit_gib * (1 << 30))
        return int(DEFAULT_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

    def cells(self, cores: int | None = None) -> list[tuple[Cell, float]]:
        """Every cell with its timeout, in a stable order, duplicates removed. Validates every name."""
        return [(cell, timeout) for cell, timeout, _ in self.planned(cores)]

    def planned(self, cores: int | None = None) -> list[tuple[Cell, float, int]]:
        """Every cell with its timeout and its number of worker processes (see ``cells``)."""
        cores = cores or available_cores()
        planned: dict[Cell, tuple[float, int]] = {}
        for sweep in self.sweeps:
            _check_names(sweep)
            threads = _threads(sweep.threads, cores)
            repetitions = sweep.repetitions or self.repetitions
            for framework in sweep.frameworks or default_frameworks():
                for workload in sweep.workloads:
                    for scenario in sweep.scenarios:
                        for device, precision in itertools.product(sweep.devices, sweep.precisions):
                            for batch_size, count, replicas in itertools.product(
                                    _batch_sizes(sweep, workload, scenario), threads, _replicas(sweep, scenario)):
                                _check_replicas(replicas, batch_size, count, cores)
                                measurement = (latency_measurement(self.measurement)
                                               if scenario == "infer" and (sweep.latency or batch_size == 1)
                                               else self.measurement)
                                cell = Cell(
                                    framework=framework, workload=workload, scenario=scenario,
                                    batch_size=batch_size, threads=count, device=device,
                                    precision=precision, measurement=measurement, replicas=replicas,
                                    **_training(sweep, workload, scenario),
                                )
                                timeout = default_timeout_s(cell) if sweep.timeout_s is None else sweep.timeout_s
                                planned.setdefault(cell, (timeout, repetitions))
        return [(cell, timeout, repetitions) for cell, (timeout, repetitions) in planned.items()]


def _replicas(sweep: Sweep, scenario: str) -> tuple[int, ...]:
    """The sweep's replica counts for a train-dp cell; one process for any other."""
    return sweep.replicas if scenario == DATA_PARALLEL_SCENARIO else (1,)


def _check_replicas(replicas: int, batch_size: int, threads: int, cores: int) -> None:
    """A data-parallel cell splits its global batch evenly and gives each replica cores of its own."""
    if batch_size % replicas:
        raise SuiteError(f"a train-dp batch of {batch_size} does not split evenly over {replicas} replicas: choose"
                         f" batch sizes that are multiples of {replicas}")
    if replicas * threads > cores:
        raise SuiteError(f"{replicas} replicas of {counted(threads, 'thread')} need {replicas * threads} cores, and"
                         f" this machine allows {cores}: choose fewer replicas or threads")


def latency_measurement(measurement: Measurement) -> Measurement:
    """The measurement of a latency cell (an inference cell at batch 1, or any of a ``latency`` sweep):
    each process times at least the steps its p99 needs (measure/stats.steps_for_percentile)."""
    return replace(measurement, min_steps=max(measurement.min_steps, steps_for_percentile(LATENCY_PERCENTILES[-1])))


def _batch_sizes(sweep: Sweep, workload: str, scenario: str) -> tuple[int, ...]:
    """The sweep's batch sizes, else the workload's recipe (its training recipe's, for accuracy)."""
    if sweep.batch_sizes:
        return sweep.batch_sizes
    training = CATALOGUE[workload].training
    if scenario == "accuracy" and training is not None:
        return (training.batch_size,)
    return (CATALOGUE[workload].default_batch_size,)


def _training(sweep: Sweep, workload: str, scenario: str) -> dict[str, Any]:
    """An accuracy cell's epochs and target: the sweep's, else the workload's training recipe."""
    training = CATALOGUE[workload].training
    if scenario != "accuracy" or training is None:
        return {}  # a workload without real data: the worker stores the cell as unsupported
    target = sweep.target_accuracy if sweep.target_accuracy is not None else training.target_accuracy
    return {"epochs": sweep.epochs or training.epochs, "target_accuracy": target}


def _select(sweep: Sweep, axis: str, chosen: tuple[str, ...]) -> Sweep:
    """``sweep`` with only the ``chosen`` names of its workloads or scenarios."""
    names = tuple(name for name in getattr(sweep, axis) if name in chosen)
    return replace(sweep, workloads=names) if axis == "workloads" else replace(sweep, scenarios=names)


def available_cores() -> int:
    """Cores this process may run on (affinity), which is what a worker can be given."""
    return len(os.sched_getaffinity(0))


def _threads(value: tuple[int, ...] | str, cores: int) -> tuple[int, ...]:
    if value == "max":
        return (cores,)
    if value == "all":
        counts, count = [], 1
        while count <= cores:
            counts.append(count)
            count *= 2
        return tuple(counts)
    assert not isinstance(value, str)
    too_many = [count for count in value if count > cores]
    if too_many:
        raise SuiteError(
            f"{too_many[0]} threads asked for, but this machine lets dlarena use {counted(cores, 'core')}; "
            f"choose thread counts from 1 to {cores}, or 'all'"
        )
    return value


def _check_names(sweep: Sweep) -> None:
    for framework in sweep.frameworks or ():
        if framework not in FRAMEWORKS:
            raise UnknownNameError("framework", framework, FRAMEWORKS)
    for workload in sweep.workloads:
        if workload not in CATALOGUE:
            raise UnknownNameError("workload", workload, CATALOGUE)
    for scenario in sweep.scenarios:
        if scenario not in SCENARIOS:
            raise UnknownNameError("scenario", scenario, SCENARIOS)
    for device in sweep.devices:
        if device not in DEVICES:
            raise UnknownNameError("device", device, DEVICES)
    frameworks = sweep.frameworks or default_frameworks()
    for precision in sweep.precisions:
        if precision not in PRECISIONS:
            raise UnknownNameError("precision", precision, PRECISIONS)
        # One framework that runs it is enough: the others' cells are stored as unsupported, which
        # the report shows; none at all is a selection that can measure nothing.
        if not any(precision in FRAMEWORKS[name].precisions for name in frameworks):
            raise SuiteError(f"no selected framework runs {precision}; what each runs: {precision_support(frameworks)}")
        if precision_of(precision).gpu_only and "cuda" not in sweep.devices:
            raise SuiteError(f"{GPU_ONLY_REASON}; this selection's devices: {', '.join(sweep.devices)}")
    if not sweep.workloads:
        raise SuiteError("the suite selects no workload; name some with workloads = [...] or --workloads")


def builtin_suites() -> dict[str, str]:
    """Built-in suite names and their TOML text."""
    folder = resources.files("dlarena.suites")
    return {
        entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda item: item.name)
        if entry.name.endswith(".toml")
    }


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a suite TOML file by path."""
    builtins = builtin_suites()
    if name_or_path in builtins:
        return parse_suite(builtins[name_or_path], f"built-in suite {name_or_path!r}")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise SuiteError(f"cannot read suite file {path}: {error.strerror}") from None
        return parse_suite(text, str(path))
    raise UnknownNameError("suite", name_or_path, builtins)


def parse_suite(text: str, origin: str) -> Suite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"{origin} is not valid TOML: {error}") from None
    _reject_unknown(data, _TOP_KEYS, origin)
    defaults = {key: data[key] for key in _SWEEP_KEYS if key in data}
    sweep_tables = data.get("sweep", [{}])
    if not isinstance(sweep_tables, list) or not all(isinstance(table, dict) for table in sweep_tables):
        raise SuiteError(f"{origin}: 'sweep' must be a list of tables, written [[sweep]]")
    sweeps = []
    for index, table in enumerate(sweep_tables, start=1):
        where = f"{origin}, sweep {index}" if "sweep" in data else origin
        _reject_unknown(table, _SWEEP_KEYS, where)
        sweeps.append(_sweep({**defaults, **table}, where))
    return Suite(
        name=_typed(data, "name", str, origin, Path(origin).stem),
        version=_typed(data, "version", int, origin, 1),
        description=_typed(data, "description", str, origin, ""),
        sweeps=tuple(sweeps),
        measurement=_measurement(data.get("measurement", {}), origin),
        repetitions=_repetitions(data, origin),
        memory_limit_gib=_memory_limit(data, origin),
        source=text,
        need=_need(_typed(data, "target_ci", float, origin, DEFAULT_TARGET_CI),
                   _typed(data, "max_processes", int, origin, DEFAULT_MAX_PROCESSES),
                   _typed(data, "time_budget_s", float, origin, None) if "time_budget_s" in data else None, origin),
    )


def _need(target_ci: float, max_processes: int, time_budget_s: float | None, origin: str | None) -> Need:
    """What timing cells need, checked; ``origin`` names the suite file (None: the command line or the API)."""
    def problem(key: str, words: str, value: float) -> SuiteError:
        where = f"{origin}: '{key}'" if origin else f"--{key.removesuffix('_s').replace('_', '-')}"
        return SuiteError(f"{where} must be {words}, got {value:g}")

    if not 0 <= target_ci < 1:
        raise problem("target_ci", "a share of the median from 0 (off) to below 1, such as 0.03", target_ci)
    if max_processes < 1:
        raise problem("max_processes", "at least 1", max_processes)
    if time_budget_s is not None and time_budget_s <= 0:
        raise problem("time_budget_s", "a positive number of seconds", time_budget_s)
    return Need(float(target_ci), max_processes, time_budget_s)


def _reject_unknown(table: dict[str, Any], valid: set[str], origin: str) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        raise SuiteError(f"{origin}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}")


def _typed(table: dict[str, Any], key: str, kind: type, origin: str, default: Any) -> Any:
    value = table.get(key, default)
    # bool is an int in Python; a suite saying `version = true` is a mistake all the same.
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise SuiteError(f"{origin}: {key!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "true or false"}.get(
        kind, kind.__name__)


def _names(table: dict[str, Any], key: str, origin: str) -> tuple[str, ...] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SuiteError(f"{origin}: {key!r} must be a list of names, got {value!r}")
    return tuple(value)


def _positive_ints(table: dict[str, Any], key: str, origin: str) -> tuple[int, ...] | None:
    if key not in table:
        return None
    value = table[key]
    if (
        not isinstance(value, list) or not value
        or not all(isinstance(item, int) and not isinstance(item, bool) and item > 0 for item in value)
    ):
        raise SuiteError(f"{origin}: {key!r} must be a list of positive integers, got {value!r}")
    return tuple(value)


def _sweep(table: dict[str, Any], origin: str) -> Sweep:
    base = Sweep()
    threads: tuple[int, ...] | str = base.threads
    if table.get("threads") in ("all", "max"):
        threads = table["threads"]
    else:
        threads = _positive_ints(table, "threads", origin) or base.threads
    timeout = _typed(table, "timeout_s", float, origin, None) if "timeout_s" in table else None
    if timeout is not None and timeout <= 0:
        raise SuiteError(f"{origin}: 'timeout_s' must be positive, got {timeout}")
    epochs = _typed(table, "epochs", int, origin, None) if "epochs" in table else None
    if epochs is not None and epochs < 1:
        raise SuiteError(f"{origin}: 'epochs' must be at least 1, got {epochs}")
    target = _typed(table, "target_accuracy", float, origin, None) if "target_accuracy" in table else None
    if target is not None and not 0 < target <= 1:
        raise SuiteError(f"{origin}: 'target_accuracy' must be a fraction in (0, 1], got {target}")
    latency = _typed(table, "latency", bool, origin, False) if "latency" in table else False
    if latency and set(_names(table, "scenarios", origin) or ()) - {"infer"}:
        raise SuiteError(f"{origin}: a latency sweep times inference only; set scenarios = [\"infer\"]")
    return Sweep(
        latency=latency,
        repetitions=_repetitions(table, origin) if "repetitions" in table else None,
        epochs=epochs,
        target_accuracy=target,
        frameworks=_names(table, "frameworks", origin),
        workloads=_names(table, "workloads", origin) or (),
        scenarios=_names(table, "scenarios", origin) or base.scenarios,
        devices=_names(table, "devices", origin) or base.devices,
        precisions=_names(table, "precisions", origin) or base.precisions,
        batch_sizes=_positive_ints(table, "batch_sizes", origin),
        threads=threads,
        replicas=_positive_ints(table, "replicas", origin) or base.replicas,
        timeout_s=timeout,
    )


def _repetitions(table: dict[str, Any], origin: str) -> int:
    repetitions: int = _typed(table, "repetitions", int, origin, DEFAULT_REPETITIONS)
    if repetitions < 1:
        raise SuiteError(f"{origin}: 'repetitions' must be at least 1, got {repetitions}")
    return repetitions


def _memory_limit(table: dict[str, Any], origin: str) -> float | None:
    if "memory_limit_gib" not in table:
        return None
    limit: float = _typed(table, "memory_limit_gib", float, origin, None)
    if limit <= 0:
        raise SuiteError(f"{origin}: 'memory_limit_gib' must be positive, got {limit}")
    return limit


def _measurement(table: Any, origin: str) -> Measurement:
    if not isinstance(table, dict):
        raise SuiteError(f"{origin}: 'measurement' must be a table, written [measurement]")
    valid = {item.name: item.type for item in fields(Measurement)}
    _reject_unknown(table, set(valid), f"{origin}, [measurement]")
    values: dict[str, Any] = {}
    for key in table:
        if key == "compile_cache":
            values[key] = _compile_cache(table[key], f"{origin}, [measurement]")
            continue
        if key == "denormals":
            values[key] = _choice(table[key], f"{origin}, [measurement]", key, DENORMAL_MODES)
            continue
        kind = int if "steps" in key else float
        values[key] = _typed(table, key, kind, f"{origin}, [measurement]", None)
        if values[key] < (0 if key in ("warmup_steps", "sample_interval_s") else 1e-9):
            raise SuiteError(f"{origin}, [measurement]: {key!r} must be positive, got {values[key]}")
    return Measurement(**values)


def _choice(value: Any, origin: str, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SuiteError(f"{origin}: {key!r} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _compile_cache(value: Any, origin: str) -> str:
    if value not in COMPILE_CACHES:
        raise SuiteError(f"{origin}: 'compile_cache' must be one of {', '.join(COMPILE_CACHES)}, got {value!r}")
    return str(value)
