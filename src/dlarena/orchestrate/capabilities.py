"""`dlarena capabilities`: ask every probe of every framework, one worker process each (as a cell:
same thread limits, time limits, statuses and fault handling), and keep each answer.

A worker's own failure (a crash, the time limit, memory) is the probe's outcome (``fail``,
``timeout``, ``oom``), with the worker's output, so that no pair of the matrix is a silent blank.
Host probes are answered in dlarena's own process: ``networks`` from the verdicts `dlarena verify`
stored, ``ecosystem`` from the package index's JSON API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from dlarena.frameworks.registry import FRAMEWORKS
from dlarena.orchestrate.executor import Executor, worker_command
from dlarena.orchestrate.orchestrator import classify
from dlarena.plan.cell import Cell
from dlarena.probes import ecosystem as pypi
from dlarena.probes.registry import HOST, PROBES, Probe
from dlarena.spec.catalogue import CATALOGUE
from dlarena.store import verdicts
from dlarena.store.database import Store

# The cell a probe's worker is started with: its framework and one thread matter (the probe sets its
# own problem); the workload is any small one every framework builds.
PROBE_WORKLOAD = "fcn5-small"
# The kinds of network the `networks` probe counts, by a layer type each kind has (spec/layers.py).
NETWORK_KINDS = (("cnn", "Conv2D"), ("rnn", "LSTM"), ("rnn", "GRU"), ("residual", "Residual"), ("inception", "Concat"))


@dataclass(frozen=True)
class ProbeAnswer:
    framework: str
    probe: str
    outcome: str  # probes/registry.OUTCOMES
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    framework_version: str | None = None
    command: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ask(framework: str, probe: Probe, executor: Executor) -> ProbeAnswer:
    """One probe of one framework, in a worker process of its own."""
    info = FRAMEWORKS[framework]
    cell = Cell(framework, PROBE_WORKLOAD, "infer", 32, 1)
    command = worker_command(cell, extra_args=["--probe", probe.name])
    if not info.is_installed():
        return ProbeAnswer(framework, probe.name, "unavailable", info.unavailable_message(), command=command)
    if info.job_module is not None:
        return ProbeAnswer(framework, probe.name, "unsupported",
                           f"{framework} runs through dlarena_runner's job worker on an older Python, which answers"
                           " no probe yet", command=command)
    execution = executor.execute(cell, probe.timeout_s, ["--probe", probe.name])
    status, message = classify(execution, probe.timeout_s)
    data = execution.data or {}
    version = data.get("framework_version")
    answered = data.get("probe") if status == "ok" else None
    if answered:
        return ProbeAnswer(framework, probe.name, str(answered["outcome"]), str(answered.get("message", "")),
                           dict(answered.get("figures") or {}), version, execution.command, execution.wall_s,
                           execution.output_tail if answered["outcome"] != "pass" else "")
    outcome = status if status in ("unsupported", "unavailable", "timeout", "oom") else "fail"
    return ProbeAnswer(framework, probe.name, outcome, message or "the worker answered nothing", {}, version,
                       execution.command, execution.wall_s, execution.output_tail)


def networks(framework: str, store: Store, code_version: str) -> ProbeAnswer:
    """Which catalogue networks `dlarena verify` found it computing as the oracle does, by kind."""
    found = {workload: (status, version) for (name, workload, version, precision), status
             in verdicts.statuses(store, code_version).items() if name == framework and precision == "float32"}
    if not found:
        return ProbeAnswer(framework, "networks", "unavailable",
                           f"`dlarena verify` has not checked {framework} with this dlarena yet (run `dlarena verify"
                           f" --frameworks {framework} --workloads all`)")
    verified = sorted(workload for workload, (status, _) in found.items() if status == "ok")
    kinds: dict[str, int] = {}
    for kind, layer in NETWORK_KINDS:
        kinds[kind] = kinds.get(kind, 0) + sum(
            1 for workload in verified if workload in CATALOGUE and layer in CATALOGUE[workload].network.layer_types())
    figures = {"verified": len(verified), "checked": len(found), **kinds, "workloads": verified}
    version = next(iter(found.values()))[1]
    if not verified:
        return ProbeAnswer(framework, "networks", "fail", f"none of the {len(found)} networks checked is verified",
                           figures, version)
    return ProbeAnswer(framework, "networks", "pass", "", figures, version)


def ecosystem(framework: str, store: Store, code_version: str, today: date | None = None) -> ProbeAnswer:
    """Its main distribution on the package index (probes/ecosystem.py): latest release and date, releases
    in the last 12 months, wheels by CPython version and platform. When the index cannot be read, the
    answer is unavailable and keeps the figures of the last pass, with ``fetched_at`` saying when.
    ``today`` ends the 12 months (tests fix it); None: today in UTC."""
    info = FRAMEWORKS[framework]
    project = pypi.project_of(framework, info.distributions)
    if project is None:
        return ProbeAnswer(framework, "ecosystem", "unsupported",
                           pypi.NOT_ON_INDEX.get(framework, f"{framework} is not distributed on PyPI"))
    installed = info.versions()  # tensorflow's may be tensorflow-cpu's: the same release, another wheel
    version = installed.get(project) or next(iter(installed.values()), None)
    try:
        figures = pypi.summarise(pypi.fetch(project), today or datetime.now(UTC).date())
    except pypi.NotOnIndex as error:
        return ProbeAnswer(framework, "ecosystem", "fail", str(error), {"distribution": project}, version)
    except pypi.IndexUnavailable as error:
        kept = store.last_probe_pass(framework, "ecosystem")
        if kept is None:
            return ProbeAnswer(framework, "ecosystem", "unavailable", f"{error}; no earlier answer is stored",
                               {"distribution": project}, version)
        figures = {**kept["figures"], "fetched_at": kept["figures"].get("fetched_at") or kept["checked_at"]}
        return ProbeAnswer(framework, "ecosystem", "unavailable",
                           f"{error}; the figures kept are those read at {figures['fetched_at']}", figures, version)
    figures = {"distribution": project, **figures, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return ProbeAnswer(framework, "ecosystem", "pass", "", figures, version)


HOST_PROBES: dict[str, Callable[[str, Store, str], ProbeAnswer]] = {"networks": networks, "ecosystem": ecosystem}


def capabilities(frameworks: Sequence[str], probes: Sequence[str], executor: Executor, store: Store,
                 code_version: str, on_answer: Callable[[ProbeAnswer], None] | None = None) -> list[ProbeAnswer]:
    """Every probe of every framework, framework by framework, each answer kept as it arrives."""
    answers = []
    for framework in frameworks:
        for name in probes:
            probe = PROBES[name]
            answer = HOST_PROBES[name](framework, store, code_version) if probe.where == HOST else ask(
                framework, probe, executor)
            answers.append(answer)
            if on_answer:
                on_answer(answer)
    return answers
