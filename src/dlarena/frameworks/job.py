"""The host's half of the old-interpreter boundary: a cell's networks written as files a worker reads.

CNTK runs on Python 3.6, Caffe and Caffe2 on 3.9; their workers cannot import dlarena's spec, so the
host writes everything the framework needs for a cell (the design in DEVELOPERS.md, "The
old-Python boundary"): ``job.json`` with each network as JSON (its layers with their paths, shapes and
canonical parameters), its recipe, the loss divisor and the FLOPs of a step, and one ``.npz`` per
network with the starting weights (or, to verify, the canonical ones) and the batch. The worker,
``dlarena_runner.job_worker``, reads them with ``dlarena_runner.model`` and writes the same result
record as ``dlarena.worker``.

A job is keyed by its contents and kept in the cache (``<cache>/jobs/KEY``), so that the command
stored with a result can be run again by hand, and every framework and repetition of a cell shares
one copy of its arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlarena.data.cache import cache_base
from dlarena.frameworks.kernel import loss_divisor
from dlarena.plan.cell import Cell
from dlarena.spec import Network, Workload, weights
from dlarena.spec.catalogue import get_workload
from dlarena.spec.layers import Concat, Layer, Residual, pair
from dlarena.spec.weights import canonical_batch, canonical_weights, initial_weights, layer_params

JOB_SCHEMA = 1  # the layout of job.json; dlarena_runner.job_worker refuses another
JOB_FILE = "job.json"
# Fields of the spec's windowed layers that the job always writes as (height, width) pairs, so that a
# framework module never tells an int from a pair (a pooling stride of None means the window's).
_PAIRED = ("kernel", "stride", "padding")


def layer_json(layer: Layer, path: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """One layer as the job writes it: its type, path, shapes, fields and canonical parameters."""
    out = layer.out_shape(shape)
    data: dict[str, Any] = {"type": type(layer).__name__, "path": path, "input_shape": list(shape),
                            "output_shape": list(out)}
    if isinstance(layer, Residual):
        data["body"] = sequence_json(layer.body, shape, f"{path}.body.")
        data["shortcut"] = sequence_json(layer.shortcut, shape, f"{path}.shortcut.")
        return data
    if isinstance(layer, Concat):
        data["branches"] = [sequence_json(branch, shape, f"{path}.branches.{index}.")
                            for index, branch in enumerate(layer.branches)]
        return data
    for field in dataclasses.fields(layer):
        value = getattr(layer, field.name)
        if field.name in _PAIRED:
            value = list(pair(value if value is not None else getattr(layer, "kernel")))  # noqa: B009
        data[field.name] = value
    data["params"] = [{"name": spec.name, "shape": list(spec.shape), "role": spec.role}
                      for spec in layer_params(path, layer, shape)]
    return data


def sequence_json(layers: Sequence[Layer], shape: tuple[int, ...], prefix: str = "") -> list[dict[str, Any]]:
    found = []
    for index, layer in enumerate(layers):
        found.append(layer_json(layer, f"{prefix}{index}", shape))
        shape = layer.out_shape(shape)
    return found


def network_json(network: Network) -> dict[str, Any]:
    """The network as ``dlarena_runner.model.Network`` reads it."""
    return {"input_shape": list(network.input_shape), "input_kind": network.input_kind,
            "classes": network.classes, "label_kind": network.label_kind, "vocab": network.vocab,
            "layers": sequence_json(network.layers, network.input_shape)}


def _network_entry(workload: Workload, batch_size: int) -> dict[str, Any]:
    plan = workload.training
    return {"network": network_json(workload.network), "recipe": dataclasses.asdict(workload.recipe),
            "training": {"dataset": plan.dataset, "epochs": plan.epochs} if plan is not None else None,
            "loss_divisor": loss_divisor(workload.network, workload.recipe, max(batch_size, 1)),
            "flops_per_step": {scenario: workload.flops(scenario, batch_size) for scenario in ("train", "infer")},
            "arrays": f"{workload.name}.npz"}


def _training_arrays(workload: Workload) -> dict[str, np.ndarray]:
    """The accuracy scenario's real data set, as ``dlarena.worker.train_cell`` loads it."""
    from dlarena.data import load_dataset

    network, plan = workload.network, workload.training
    assert plan is not None  # the registry and the orchestrator refuse a workload without one first
    dataset = load_dataset(plan.dataset, vocab=network.vocab or None,
                           steps=network.input_shape[0] if network.input_kind == "tokens" else None)
    return {"train/inputs": dataset.train.inputs, "train/labels": dataset.train.labels,
            "test/inputs": dataset.test.inputs, "test/labels": dataset.test.labels}


def _arrays(workload: Workload, purpose: str, batch_size: int, precision: str, seed: int) -> dict[str, np.ndarray]:
    """The weights (``weight/NAME``) and the batch (``inputs``, ``labels``) a worker starts from; to
    train to accuracy, the real data set's splits (``train/inputs``, ...) instead of the batch."""
    network = workload.network
    dtype = np.dtype(precision)
    if purpose == "accuracy":
        start = initial_weights(network, workload.recipe.init, seed)
        return {**_training_arrays(workload), **{f"weight/{key}": value for key, value in start.items()}}
    if purpose == "verify":  # the canonical weights, exact in float64 too (worker.verify_cell)
        start = {key: value.astype(dtype) for key, value in canonical_weights(network, seed).items()}
    else:
        start = initial_weights(network, workload.recipe.init, seed)
    inputs, labels = canonical_batch(network, batch_size, seed)
    if network.input_kind != "tokens":
        inputs = inputs.astype(dtype)
    return {"inputs": inputs, "labels": labels, **{f"weight/{key}": value for key, value in start.items()}}


def job_folder(cell: Cell, purpose: str, workloads: Sequence[str] = ()) -> Path:
    """The job for ``cell`` (``purpose`` "time" or "verify" with ``workloads``), written if it is not
    in the cache yet; its folder."""
    names = list(workloads) or [cell.workload]
    entries = {name: _network_entry(get_workload(name), cell.batch_size) for name in names}
    job = {"schema": JOB_SCHEMA, "purpose": purpose, "batch_size": cell.batch_size, "precision": cell.precision,
           "seed": cell.seed, "networks": entries}
    text = json.dumps(job, sort_keys=True)
    # The arrays follow from job.json and the code that draws them: both key the folder.
    material = text + Path(weights.__file__).read_text(encoding="utf-8")
    folder = cache_base() / "jobs" / hashlib.sha256(material.encode()).hexdigest()[:16]
    if (folder / JOB_FILE).exists():
        return folder
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name in names:
            arrays = _arrays(get_workload(name), purpose, cell.batch_size, cell.precision, cell.seed)
            np.savez(partial / entries[name]["arrays"], **arrays)  # type: ignore[arg-type]
        (partial / JOB_FILE).write_text(text, encoding="utf-8")  # last: its presence means complete
        try:
            os.replace(partial, folder)
        except OSError:  # another process wrote the same job first: the same contents
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def worker_arguments(cell: Cell, module: str, variables: dict[str, str], extra_args: Sequence[str]) -> list[str]:
    """``-m dlarena_runner.job_worker ...`` for ``cell``: its job written, the framework's module and
    variables named. ``extra_args`` are the verify command's (``--verify FOLDER --workloads A,B``)."""
    purpose, workloads = ("accuracy" if cell.scenario == "accuracy" else "time"), []
    if "--verify" in extra_args:
        purpose = "verify"
        if "--workloads" in extra_args:
            workloads = extra_args[list(extra_args).index("--workloads") + 1].split(",")
    folder = job_folder(cell, purpose, workloads)
    return ["-m", "dlarena_runner.job_worker", "--job", str(folder), "--module", module,
            "--variables", json.dumps(variables, sort_keys=True), "--cell", cell.to_json(), *extra_args]
