"""The Ray executor: each cell's worker runs on a node of a Ray cluster, one measurement per node at a time.

A node offers measurement slots as a Ray custom resource (SLOT_RESOURCE, one per machine: concurrent
measurements corrupt each other), and a cell's task holds one for its whole measurement. The task is
a thin launcher (``launch``): on its node it checks that the framework is there, reads the canary,
starts the ordinary worker process through the local executor (the same isolation, time and memory
limits, and process-group guard as a local run) and returns what happened with the node's name and
machine snapshot. No framework is imported by the task, nor by this module; Ray itself is imported
only when a run asks for this executor (``pip install 'dlarena[ray]'``).

The orchestrator stays the only writer of the database: results come back to it as tasks end.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dlarena.errors import DlarenaError
from dlarena.orchestrate.executor import OUTPUT_TAIL_BYTES, Execution, LocalExecutor, NodePeak
from dlarena.plan.cell import Cell

# The custom resource a node offers for measurements: `ray start --resources '{"dlarena_slot": 1}'`.
# One per machine, as the local executor runs one cell at a time; a node without it runs no cell.
SLOT_RESOURCE = "dlarena_slot"
# A node's name in results and reports: its label of this key (`ray start --labels dlarena-node=NAME`)
# where it has one, else its address (with the start of its Ray node id when two nodes share one).
NODE_LABEL = "dlarena-node"
# The node id's first hex digits that tell apart two nodes of one address (Ray prints the same).
NODE_ID_DIGITS = 8
# A Ray node id, as Ray's errors quote it: 56 hex digits.
_NODE_ID = re.compile(r"\b[0-9a-f]{56}\b")
INSTALL_HINT = "pip install 'dlarena[ray]'"
# How long the cluster's head may take to accept a TCP connection before the run is refused: ray.init
# itself retries an address where nothing listens for many minutes (measured: over 10 with Ray 2.60).
CONNECT_TIMEOUT_S = 10.0


class RayError(DlarenaError):
    """A Ray cluster that cannot be used as asked."""


@dataclass(frozen=True)
class Placement:
    """Where a run's cells go on a cluster: which cluster, which of its nodes, and whether every chosen
    node runs every cell (the cross-machine comparison) or each cell runs once, on a free node."""

    address: str | None = None  # HOST:PORT of the cluster's head; None: RAY_ADDRESS, or the one started here
    selector: Mapping[str, str] = field(default_factory=dict)  # node labels a node must have
    spread: bool = False

    def stored(self) -> dict[str, Any]:
        """What a run records of it, so that a resume sends its cells to the same nodes (not the address:
        a cluster restarted elsewhere is still the same nodes, by their labels)."""
        return {"executor": "ray", "selector": dict(self.selector), "spread": self.spread}

    @classmethod
    def resumed(cls, stored: Mapping[str, Any], address: str | None) -> Placement:
        return cls(address, dict(stored.get("selector") or {}), bool(stored.get("spread")))


@dataclass(frozen=True)
class Node:
    """A live node of the cluster with a measurement slot."""

    node_id: str
    name: str
    address: str
    labels: dict[str, str]


def parse_selector(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE...]`` as a label selector; a sentence naming the mistake otherwise."""
    selector: dict[str, str] = {}
    for part in (item.strip() for item in text.split(",")):
        key, equals, value = part.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise RayError(f"--nodes takes node labels as KEY=VALUE pairs separated by commas (for example"
                           f" {NODE_LABEL}=gpu-box or cpu-type=epyc), not {part!r}")
        selector[key.strip()] = value.strip()
    return selector


def launch(cell_json: str, timeout_s: float, memory_limit_bytes: int | None) -> Execution:
    """On the node: the cell's worker under the local executor, bracketed by canary readings; ``node``
    is the Ray node id, which the host turns into the node's name."""
    import ray

    from dlarena.frameworks.registry import FRAMEWORKS
    from dlarena.measure import canary

    cell = Cell.from_json(cell_json)
    node_id = ray.get_runtime_context().get_node_id()
    machine = _machine()
    info = FRAMEWORKS.get(cell.framework)
    if info is None or not info.is_installed():
        message = (info.unavailable_message() if info is not None
                   else f"dlarena there does not know the framework {cell.framework}")
        return Execution.unrun("unavailable", message, node_id, machine)
    before = canary.read()
    execution = LocalExecutor(memory_limit_bytes=memory_limit_bytes).execute(cell, timeout_s)
    after = canary.read()
    return replace(execution, node=node_id, machine=machine, canary_s=(before, after))


def probe_node(threads: Sequence[int]) -> tuple[str, dict[str, Any], list[Any]]:
    """On the node: its Ray id, its snapshot, and the peak probe at each of ``threads``."""
    import ray

    from dlarena.measure.peak import probe

    return ray.get_runtime_context().get_node_id(), _machine(), [probe(count) for count in threads]


@functools.cache
def _machine() -> dict[str, Any]:
    """This node's snapshot, read once per Ray worker process (it reads every framework's version)."""
    from dlarena.environment import snapshot

    return snapshot()


class RayExecutor:
    """Cells as Ray tasks on the nodes that offer a slot (and match ``selector``), one per node at a time."""

    remote = True

    def __init__(self, address: str | None = None, selector: Mapping[str, str] | None = None,
                 memory_limit_bytes: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RayError(f"--executor ray needs Ray, which is not installed ({INSTALL_HINT})") from None
        self._ray: Any = ray  # typed loosely: Ray is an optional extra, absent where mypy may run
        self.selector = dict(selector or {})
        self.memory_limit_bytes = memory_limit_bytes
        self._connect(address)
        self.nodes = self._slot_nodes()
        self.slots = len(self.nodes)
        self._task = self._slot_task(launch)
        self._running: dict[int, Any] = {}  # thread id: the task it waits on (cancelled by Ctrl-C)
        self._lock = threading.Lock()

    def _slot_task(self, function: Callable[..., Any]) -> Any:
        """``function`` as a Ray task holding a node's measurement slot; the worker pins its own cores (no
        CPUs reserved), and a task that fails is data, never retried."""
        return self._ray.remote(num_cpus=0, resources={SLOT_RESOURCE: 1}, max_retries=0)(function)

    def _connect(self, address: str | None) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        given = address or os.environ.get("RAY_ADDRESS")
        if given and "://" not in given and given != "auto":
            _check_listening(given)
        try:
            ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except ConnectionError as error:
            where = f"at {address}" if address else "on this machine (and RAY_ADDRESS is not set)"
            raise RayError(f"no Ray cluster answers {where}: start one with `ray start --head --resources"
                           f" '{{\"{SLOT_RESOURCE}\": 1}}'` or pass its --address HOST:PORT ({error})") from None
        except RuntimeError as error:  # another Ray version, or another Python, than the cluster's
            raise RayError(f"cannot join the Ray cluster{f' at {address}' if address else ''}: {error}") from None

    def _slot_nodes(self) -> list[Node]:
        alive = [node for node in self._ray.nodes() if node.get("Alive")]
        with_slot = [node for node in alive if node.get("Resources", {}).get(SLOT_RESOURCE, 0) >= 1]
        nodes = _named(with_slot)
        chosen = [node for node in nodes if all(node.labels.get(key) == value for key, value in self.selector.items())]
        if not chosen:
            described = "; ".join(f"{node.name} ({_labels(node.labels)})" for node in nodes) or "none"
            wanted = ",".join(f"{key}={value}" for key, value in self.selector.items())
            labelled = f" and has the labels {wanted}" if wanted else ""
            raise RayError(
                f"no node of the Ray cluster offers a measurement slot{labelled}"
                f" (start nodes with `ray start ... --resources '{{\"{SLOT_RESOURCE}\": 1}}'`); of the"
                f" {len(alive)} live nodes, these have a slot: {described}")
        return sorted(chosen, key=lambda node: node.name)  # a run's order, and its report's, by name

    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def execute(self, cell: Cell, timeout_s: float, extra_args: Sequence[str] = ()) -> Execution:
        """Run the cell's worker on a node (``cell.node``'s, else any selected one) and wait for it."""
        if extra_args:
            raise RayError("the Ray executor runs cells, not probes or verifications")
        ray = self._ray
        options: dict[str, Any] = {}
        pinned = self._node(cell.node) if cell.node is not None else None
        if cell.node is not None and pinned is None:
            return Execution.unrun("unavailable", f"node {cell.node} is not among the cluster's live nodes with a"
                                   f" measurement slot ({', '.join(self.node_names())})", cell.node)
        if pinned is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(pinned.node_id, soft=False)
        elif self.selector:
            options["label_selector"] = dict(self.selector)
        reference = self._task.options(**options).remote(cell.to_json(), timeout_s, self.memory_limit_bytes)
        with self._lock:
            self._running[threading.get_ident()] = reference
        try:
            execution: Execution = ray.get(reference)
        except ray.exceptions.TaskCancelledError:
            raise KeyboardInterrupt from None
        except ray.exceptions.RayError as error:
            return self._lost(cell, error)
        finally:
            with self._lock:
                self._running.pop(threading.get_ident(), None)
        name = self._name_of(execution.node)
        status = execution.status
        if status is not None:
            status = (status[0], f"on node {name}: {status[1]}")
        return replace(execution, node=name, status=status)

    def peaks(self, threads: Sequence[int]) -> list[NodePeak]:
        """Every chosen node's peak at each of ``threads``, probed there while it holds the node's slot
        (nothing else measures on it meanwhile), all nodes at once."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self._slot_task(probe_node)
        references = {node.name: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node.node_id, soft=False)).remote(list(threads)) for node in self.nodes}
        found = []
        for name, reference in references.items():
            try:
                _, machine, probed = self._ray.get(reference)
            except self._ray.exceptions.RayError:  # the node died: its cells will say so
                found += [NodePeak(name, None, count, None) for count in threads]
                continue
            found += [NodePeak(name, machine, count, peak) for count, peak in zip(threads, probed, strict=True)]
        return found

    def cancel(self) -> None:
        """Ctrl-C: kill every task still running (its worker's guard then kills the worker)."""
        with self._lock:
            references = list(self._running.values())
        for reference in references:
            self._ray.cancel(reference, force=True)

    def _node(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)

    def _name_of(self, node_id: str | None) -> str:
        """A node's name from its Ray id (a node that joined after the run started: its id's start)."""
        return next((node.name for node in self.nodes if node.node_id == node_id),
                    (node_id or "unknown")[:NODE_ID_DIGITS])

    def _lost(self, cell: Cell, error: Exception) -> Execution:
        """A task that ended without the launcher's answer: its node died, or its Ray worker did."""
        text = str(error)
        found = _NODE_ID.search(text)
        name = self._name_of(found.group()) if found else (cell.node or "unknown")
        kind = type(error).__name__
        first = text.strip().splitlines()[0] if text.strip() else kind
        if kind == "NodeDiedError":
            message = f"node {name} died during the cell ({first})"
        else:
            message = f"the cell's Ray task on node {name} ended without a result: {kind}: {first}"
        return Execution.unrun("failed", message, name, output_tail=text[-OUTPUT_TAIL_BYTES:])


def _check_listening(address: str) -> None:
    """Refuse at once an address where no cluster head listens (see CONNECT_TIMEOUT_S)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--address takes the cluster head's HOST:PORT (as `ray start --head` prints it),"
                       f" not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise RayError(f"no Ray cluster answers at {address} ({error.strerror or error}): start its head with"
                       f" `ray start --head --resources '{{\"{SLOT_RESOURCE}\": 1}}'` there, or give the address"
                       " it prints") from None


def _named(raw: Sequence[Mapping[str, Any]]) -> list[Node]:
    """Nodes by name: the NODE_LABEL label, else the address, made unique with the node id's start."""
    addresses = [str(node.get("NodeManagerAddress", "")) for node in raw]
    nodes = []
    for node, address in zip(raw, addresses, strict=True):
        labels = {str(key): str(value) for key, value in (node.get("Labels") or {}).items()}
        node_id = str(node["NodeID"])
        name = labels.get(NODE_LABEL) or (
            address if addresses.count(address) == 1 else f"{address}/{node_id[:NODE_ID_DIGITS]}")
        nodes.append(Node(node_id=node_id, name=name, address=address, labels=labels))
    return nodes


def _labels(labels: Mapping[str, str]) -> str:
    shown = {key: value for key, value in labels.items() if not key.startswith("ray.io/")}
    return ", ".join(f"{key}={value}" for key, value in sorted(shown.items())) or "no labels"
