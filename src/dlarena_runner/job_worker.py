"""The worker of a framework on an interpreter that cannot import dlarena (CNTK on 3.6, Caffe on 3.9).

``python -m dlarena_runner.job_worker --job DIR --module M --variables JSON --cell JSON [--out FILE]
[--verify FOLDER [--workloads A,B]]``. The host wrote DIR (``dlarena.frameworks.job``): each network
as JSON, its recipe, and its weights and batch as ``.npz``. This does what ``dlarena.worker`` does,
in the same order and with the same record: limit threads and affinity and fix the allocator before
anything is imported, set the framework's variables, import its module (``dlarena_runner.frameworks.
NAME``, a ``dlarena_runner.model.Model``), build, warm up and time the steps, or compute each
network's outputs and gradients for ``dlarena verify``.

Python 3.6 (see the package's docstring). NumPy and the framework are imported only after the
process's limits are set.
"""

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional

from dlarena_runner import denormals
from dlarena_runner.errors import OUT_OF_MEMORY_MARKERS, Unavailable, Unsupported
from dlarena_runner.process import die_with_parent, environment_record, fix_malloc_thresholds, limit_threads
from dlarena_runner.record import VERIFY_PROGRESS_FILE, write_result
from dlarena_runner.resources import current_rss_bytes, peak_rss_bytes

JOB_SCHEMA = 1  # dlarena.frameworks.job.JOB_SCHEMA: the layout of job.json this worker reads
JOB_FILE = "job.json"
# The scenarios a job worker times (``measure``); ``train`` runs the accuracy scenario.
SCENARIOS = ("train", "infer")
# The parity fields dlarena.frameworks.base.Parity has: a module's parity() may set these.
PARITY_FIELDS = ("threads", "dtype", "layout", "execution", "tf32", "cudnn_benchmark", "denormals", "details")


class _Settings:
    """The cell's measurement settings as attributes, as dlarena_runner.timing reads them."""

    def __init__(self, values: Dict[str, Any]) -> None:
        self.__dict__.update(values)


class _Backend:
    """What dlarena_runner.denormals asks of a backend, from a job framework's module."""

    def __init__(self, module: Any, name: str) -> None:
        self.module, self.name = module, name
        if hasattr(module, "flush_denormals"):
            self.flush_denormals = module.flush_denormals
        else:  # the worker's own switch, as the host's kernel gives every framework without one
            self.flush_denormals = denormals.flush_calling_thread

    def denormal_product(self, a: Any, b: Any, device: str) -> Any:
        return self.module.denormal_product(a, b)


def _failure(error: BaseException) -> Dict[str, str]:
    """The status and message of an exception raised while building or stepping a cell."""
    if isinstance(error, Unsupported):
        return {"status": "unsupported", "message": str(error)}
    if isinstance(error, Unavailable):
        return {"status": "unavailable", "message": str(error)}
    if isinstance(error, MemoryError):
        return {"status": "oom", "message": "the framework ran out of memory (MemoryError)"}
    text = f"{type(error).__name__}: {error}"
    traceback.print_exc()
    if any(marker in text for marker in OUT_OF_MEMORY_MARKERS):
        return {"status": "oom", "message": "the framework ran out of memory: " + text[:500]}
    return {"status": "failed", "message": text}


def _read_job(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, JOB_FILE), encoding="utf-8") as handle:
        job: Dict[str, Any] = json.load(handle)
    if job.get("schema") != JOB_SCHEMA:
        raise ValueError("the job in {} has schema {}, this worker reads {}: its dlarena and the host's differ"
                         .format(folder, job.get("schema"), JOB_SCHEMA))
    return job


def _load_module(name: str, framework: str, threads: int, result: Dict[str, Any]) -> Any:
    start = time.perf_counter()
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise Unavailable(f"{framework} cannot be imported: {error}") from None
    result["import_s"] = time.perf_counter() - start
    result["framework_version"] = module.version()
    result["threads_set"] = module.set_threads(threads)
    return module


def _build(module: Any, job: Dict[str, Any], folder: str, workload: str, batch_size: int, training: bool) -> Any:
    """The framework's Model of ``workload`` with the job's weights loaded, and the job's arrays."""
    import numpy as np

    from dlarena_runner.model import Network

    start = time.perf_counter()
    entry = dict(job["networks"][workload])
    arrays = dict(np.load(os.path.join(folder, entry["arrays"])))
    entry["arrays_load_s"] = time.perf_counter() - start  # the accuracy scenario's data_load_s
    model = module.Model(Network(entry["network"]), entry["recipe"], job["precision"], batch_size, training,
                         entry["loss_divisor"])
    model.load_weights({key[len("weight/"):]: value for key, value in arrays.items() if key.startswith("weight/")})
    return model, arrays, entry


def _parity(model: Any, cell: Dict[str, Any], module_threads: Optional[int], network: Any) -> Dict[str, Any]:
    parity: Dict[str, Any] = {key: None for key in PARITY_FIELDS}
    parity["details"] = {}
    parity.update(model.parity())
    unknown = sorted(set(parity) - set(PARITY_FIELDS))
    if unknown:
        raise ValueError(f"a module's parity has fields {unknown} that the record does not know")
    if parity["threads"] is None:
        parity["threads"] = module_threads
    parity["dtype"] = parity["dtype"] or cell["precision"]
    image = len(network.input_shape) == 3 and network.input_kind != "tokens"
    parity["layout"] = parity["layout"] or ("NCHW" if image else None)
    return parity


def measure(cell: Dict[str, Any], job: Dict[str, Any], folder: str, module_name: str) -> Dict[str, Any]:
    """Build and time one cell (``dlarena.worker.time_cell``'s record); never an exception."""
    from dlarena_runner.sampler import ResourceSampler
    from dlarena_runner.timing import run_timed

    result: Dict[str, Any] = {"cell": cell, "status": "failed"}
    measurement = cell["measurement"]
    try:
        module = _load_module(module_name, cell["framework"], cell["threads"], result)
        backend = _Backend(module, cell["framework"])
        result["denormals"] = denormals.apply(backend, measurement["denormals"])
        if cell["scenario"] not in SCENARIOS:
            raise Unsupported("{} runs the scenarios {}, not {!r}".format(
                cell["framework"], ", ".join(SCENARIOS), cell["scenario"]))
        if cell["device"] != "cpu":
            raise Unsupported("{} runs on cpu in dlarena, not {!r}".format(cell["framework"], cell["device"]))
        start = time.perf_counter()
        training = cell["scenario"] == "train"
        model, arrays, entry = _build(module, job, folder, cell["workload"], cell["batch_size"], training)
        inputs, labels = model.device_batch(arrays.pop("inputs")), model.device_batch(arrays.pop("labels"))
        del arrays
        result["build_s"] = time.perf_counter() - start
        result["params"] = model.trainable_params()
        result["flops_per_step"] = entry["flops_per_step"][cell["scenario"]]
        rss_before = current_rss_bytes()
        interval = measurement["sample_interval_s"]
        sampler = ResourceSampler(interval) if interval > 0 else None
        if training:
            def step() -> None:
                model.train_step(inputs, labels)
        else:
            def step() -> None:
                model.infer_step(inputs)
        timings = run_timed(step, model.sync, _Settings(measurement), steady=sampler)
        resources = sampler.report() if sampler else {}
        result["denormals"] = denormals.probe(backend, cell["device"], result["denormals"])
        parity = _parity(model, cell, result["threads_set"], model.network)
        parity["denormals"] = result["denormals"]["measured"]
        cross_check = getattr(model, "cross_check", None)
        if cross_check is not None and timings.samples_s:  # the framework's own timer, beside ours
            median = sorted(timings.samples_s)[len(timings.samples_s) // 2]
            try:
                parity["details"]["cross_check"] = cross_check(median)
            except Exception as error:  # a failed cross-check is reported, the measurement stands
                parity["details"]["cross_check"] = {"error": f"{type(error).__name__}: {error}"}
        result.update({
            "resources": resources, "status": "ok", "first_step_s": timings.first_step_s,
            "warmup_s": timings.warmup_s, "samples_s": timings.samples_s, "loop_wall_s": timings.loop_wall_s,
            "loop_cpu_s": timings.loop_cpu_s, "cores_used": timings.cores_used, "rss_before_bytes": rss_before,
            "rss_after_bytes": current_rss_bytes(), "parity": parity,
        })
    except Exception as error:  # a framework's failure is data, with its traceback on stderr
        result.update(_failure(error))
    result.pop("threads_set", None)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


class _Trainer:
    """What dlarena_runner.training asks of a trainer (frameworks/base.Trainer), from a Model built in
    training form: each real batch converted as the timed steps' is, logits in inference mode."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def train_step(self, inputs: Any, labels: Any) -> Any:
        return self.model.train_step(self.model.device_batch(inputs), self.model.device_batch(labels))

    def predict(self, inputs: Any) -> Any:
        return self.model.logits(self.model.device_batch(inputs))

    def sync(self) -> None:
        self.model.sync()


def train(cell: Dict[str, Any], job: Dict[str, Any], folder: str, module_name: str) -> Dict[str, Any]:
    """The accuracy scenario (``dlarena.worker.train_cell``'s record): train from the shared starting
    weights on the real data set the host wrote, test after each epoch; never an exception."""
    from dlarena_runner.sampler import ResourceSampler
    from dlarena_runner.training import train_to_accuracy

    result: Dict[str, Any] = {"cell": cell, "status": "failed"}
    measurement = cell["measurement"]
    try:
        module = _load_module(module_name, cell["framework"], cell["threads"], result)
        backend = _Backend(module, cell["framework"])
        result["denormals"] = denormals.apply(backend, measurement["denormals"])
        if cell["device"] != "cpu":
            raise Unsupported("{} runs on cpu in dlarena, not {!r}".format(cell["framework"], cell["device"]))
        start = time.perf_counter()
        model, arrays, entry = _build(module, job, folder, cell["workload"], cell["batch_size"], True)
        build_s = time.perf_counter() - start - entry["arrays_load_s"]
        plan = entry["training"]
        epochs = cell["epochs"] or plan["epochs"]
        rss_before = current_rss_bytes()
        interval = measurement["sample_interval_s"]
        sampler = ResourceSampler(interval) if interval > 0 else None
        train_split = (arrays["train/inputs"], arrays["train/labels"])
        test_split = (arrays["test/inputs"], arrays["test/labels"])
        run = train_to_accuracy(_Trainer(model), train_split, test_split, cell["batch_size"], epochs,
                                cell["target_accuracy"], cell["seed"], steady=sampler)
        result["denormals"] = denormals.probe(backend, cell["device"], result["denormals"])
        parity = _parity(model, cell, result["threads_set"], model.network)
        parity["denormals"] = result["denormals"]["measured"]
        accuracy = {"dataset": plan["dataset"], "train_samples": len(train_split[0]),
                    "test_samples": len(test_split[0]), "epochs_planned": epochs,
                    "data_load_s": entry["arrays_load_s"]}
        accuracy.update(run.to_dict())
        result.update({
            "status": "ok", "params": model.trainable_params(), "flops_per_step": entry["flops_per_step"]["train"],
            "build_s": build_s, "first_step_s": run.first_step_s, "warmup_s": [], "samples_s": run.samples_s,
            "loop_wall_s": run.loop_wall_s, "loop_cpu_s": run.loop_cpu_s,
            "cores_used": run.loop_cpu_s / run.loop_wall_s if run.loop_wall_s > 0 else 0.0,
            "rss_before_bytes": rss_before, "rss_after_bytes": current_rss_bytes(),
            "resources": sampler.report() if sampler else {}, "parity": parity, "accuracy": accuracy,
        })
    except Exception as error:  # a framework's failure is data, with its traceback on stderr
        result.update(_failure(error))
    result.pop("threads_set", None)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def verify(cell: Dict[str, Any], job: Dict[str, Any], folder: str, module_name: str, out: str,
           workloads: List[str]) -> Dict[str, Any]:
    """Every network's outputs and gradients into ``out/NAME.npz`` (``dlarena.worker.verify_cell``)."""
    import gc

    result: Dict[str, Any] = {"cell": cell, "status": "failed", "workloads": {}}
    if not os.path.isdir(out):
        os.makedirs(out)
    try:
        module = _load_module(module_name, cell["framework"], cell["threads"], result)
    except Exception as error:  # the framework is absent or broken: every network shares its status
        result.update(_failure(error))
        return result
    result.pop("threads_set", None)
    with open(os.path.join(out, VERIFY_PROGRESS_FILE), "a", encoding="utf-8") as progress:
        for name in workloads:
            progress.write(json.dumps({"workload": name, "event": "start"}) + "\n")
            progress.flush()
            start = time.perf_counter()
            record = _verify_network(module, job, folder, name, os.path.join(out, name + ".npz"))
            record["wall_s"] = time.perf_counter() - start
            result["workloads"][name] = record
            event = {"workload": name, "event": "done"}
            event.update(record)
            progress.write(json.dumps(event) + "\n")
            progress.flush()
            gc.collect()
    result["status"] = "ok"
    return result


def _verify_network(module: Any, job: Dict[str, Any], folder: str, name: str, path: str) -> Dict[str, Any]:
    import numpy as np

    record: Dict[str, Any] = {"status": "failed"}
    try:
        model, arrays, _ = _build(module, job, folder, name, 0, False)
        record["params"] = model.trainable_params()
        weights = {key[len("weight/"):]: value for key, value in arrays.items() if key.startswith("weight/")}
        exported = model.export_weights()
        record["roundtrip_differs"] = sorted(
            key for key in set(weights) | set(exported)
            if key not in weights or key not in exported or exported[key].dtype != weights[key].dtype
            or not np.array_equal(weights[key], exported[key]))
        outputs = {"logits": np.asarray(model.logits(model.device_batch(arrays["inputs"])))}
        try:
            loss, gradients = model.canonical_gradients(model.device_batch(arrays["inputs"]),
                                                        model.device_batch(arrays["labels"]))
            outputs["loss"] = np.asarray(loss, dtype=np.float64)
            outputs.update({"grad/" + key: np.asarray(value) for key, value in gradients.items()})
            record["gradients"] = True
        except Unsupported as error:
            record["gradients"] = False
            record["gradients_message"] = str(error)
        np.savez(path, **outputs)  # type: ignore[arg-type]  # NumPy's stub types **kwds as bool
        record["status"] = "ok"
    except Exception as error:
        record.update(_failure(error))
    return record


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlarena_runner.job_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="the job's folder, written by the host")
    parser.add_argument("--module", required=True, help="the framework's module in dlarena_runner.frameworks")
    parser.add_argument("--variables", default="{}", help="the framework's variables, as JSON, set before import")
    parser.add_argument("--cell", required=True, help="the cell as JSON, as stored with its result")
    parser.add_argument("--out", help="write the JSON result here (default: standard output)")
    parser.add_argument("--verify", metavar="FOLDER", help="verification mode: write each network's arrays to FOLDER")
    parser.add_argument("--workloads", help="with --verify: comma-separated networks (default: the cell's)")
    args = parser.parse_args(argv)
    cell = json.loads(args.cell)
    if args.out:  # started by an orchestrator (by hand, results go to the terminal)
        die_with_parent()
    malloc = fix_malloc_thresholds()
    affinity = limit_threads(cell["threads"])
    variables = json.loads(args.variables)
    os.environ.update(variables)
    job = _read_job(args.job)
    if args.verify:
        workloads = args.workloads.split(",") if args.workloads else [cell["workload"]]
        result = verify(cell, job, args.job, args.module, args.verify, workloads)
    elif cell["scenario"] == "accuracy":
        result = train(cell, job, args.job, args.module)
    else:
        result = measure(cell, job, args.job, args.module)
    result["affinity"] = affinity
    result["framework_variables"] = variables
    result["environment"] = environment_record()
    result["malloc"] = malloc
    # Nothing these frameworks compile is kept between processes, so a cold cell and a shared one
    # start alike; the record says which was asked.
    result["compile_cache"] = {"mode": cell["measurement"]["compile_cache"], "emptied": [], "removed": []}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
