"""The per-cell worker process: ``python -m dlarena.worker --cell JSON [--out FILE]``.

It limits threads and CPU affinity *before* anything that could start a thread pool (NumPy's BLAS,
a framework) is imported, then builds the network, warms up, measures, and writes one JSON result.
Run by hand with the command stored beside a result, it prints the result on standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dlarena.plan.cell import Cell
from dlarena.probes.registry import PROBES, probe_info
from dlarena.spec.workload import DATA_PARALLEL_SCENARIO
from dlarena_runner.errors import OUT_OF_MEMORY_MARKERS
from dlarena_runner.process import die_with_parent, environment_record, fix_malloc_thresholds, limit_threads
from dlarena_runner.record import VERIFY_PROGRESS_FILE, write_result

if TYPE_CHECKING:
    from dlarena.frameworks.base import Backend, StepRequest
    from dlarena.frameworks.data_parallel import Leader, Others, Replicas
    from dlarena_runner.sampler import ResourceSampler
    from dlarena_runner.timing import Timings

# Where frameworks keep compiled code between processes, and the variable that moves each cache. In
# a cold cell (Measurement.compile_cache) they point into an empty folder of the process's own, so
# nothing compiled by an earlier process is found: torch.compile's Inductor cache (FX graphs,
# AOTAutograd, compiled C++ kernels; /tmp/torchinductor_$USER by default), Triton's GPU kernels
# (~/.triton/cache) and CUDA's PTX JIT cache (~/.nv/ComputeCache).
COMPILE_CACHE_VARIABLES = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "cuda",
}
# A cold cell's private cache folder, for frameworks whose cache is moved by a flag inside another
# variable rather than by a variable of its own (Theano's base_compiledir inside THEANO_FLAGS): their
# module reads this before importing the framework.
PRIVATE_CACHE_VARIABLE = "DLARENA_COMPILE_CACHE_DIR"
# Caches that stay off unless a user's variable turns them on (JAX's persistent compilation cache):
# removed in a cold cell.
OPT_IN_CACHE_VARIABLES = ("JAX_COMPILATION_CACHE_DIR",)
# TensorFlow's persistent XLA cache is turned on by this flag inside TF_XLA_FLAGS; a cold cell drops it.
TF_XLA_FLAGS_VARIABLE = "TF_XLA_FLAGS"
TF_XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def isolate_compile_caches(mode: str, parent: str | None = None) -> tuple[dict[str, Any], str | None]:
    """Apply a cell's compile-cache mode before any framework is imported.

    Returns the record stored with the result, and the private cache folder to remove afterwards
    (None in shared mode). ``parent`` is where to make it: the orchestrator's folder for the cell,
    which it removes even when it has to kill the worker.
    """
    if mode == "shared":
        return {"mode": "shared"}, None
    import tempfile

    folder = tempfile.mkdtemp(prefix="dlarena-compile-cache-", dir=parent)
    for variable, name in COMPILE_CACHE_VARIABLES.items():
        os.environ[variable] = os.path.join(folder, name)
    os.environ[PRIVATE_CACHE_VARIABLE] = folder
    removed = [variable for variable in OPT_IN_CACHE_VARIABLES if os.environ.pop(variable, None) is not None]
    flags = os.environ.get(TF_XLA_FLAGS_VARIABLE, "").split()
    kept = [flag for flag in flags if not flag.startswith(TF_XLA_CACHE_FLAG)]
    if len(kept) < len(flags):
        os.environ[TF_XLA_FLAGS_VARIABLE] = " ".join(kept)
        removed.append(f"{TF_XLA_FLAGS_VARIABLE} {TF_XLA_CACHE_FLAG}")
    return {"mode": "cold", "emptied": sorted(COMPILE_CACHE_VARIABLES), "removed": removed}, folder


def apply_framework_variables(framework: str) -> dict[str, str]:
    """The registry's variables for ``framework`` (thread controls it reads only from its environment),
    set before anything imports it; the ones set, for the result."""
    from dlarena.frameworks.registry import FRAMEWORKS

    info = FRAMEWORKS.get(framework)
    variables = dict(info.variables) if info else {}
    os.environ.update(variables)
    return variables


def _failure(error: BaseException, framework: str | None = None) -> dict[str, str]:
    """The status and message of an exception raised while building or stepping a cell."""
    from dlarena.data.dataset import DataError, DataMissing
    from dlarena.frameworks.base import Unavailable, Unsupported
    from dlarena.frameworks.registry import FRAMEWORKS

    if isinstance(error, Unsupported):
        return {"status": "unsupported", "message": str(error)}
    if isinstance(error, Unavailable | DataMissing):
        return {"status": "unavailable", "message": str(error)}
    if isinstance(error, DataError):  # a damaged data set: its one sentence names the file
        return {"status": "failed", "message": str(error)}
    if isinstance(error, MemoryError):
        return {"status": "oom", "message": "the framework ran out of memory (MemoryError)"}
    text = f"{type(error).__name__}: {error}"
    info = FRAMEWORKS.get(framework or "")
    if any(marker in text for marker in (*OUT_OF_MEMORY_MARKERS, *(info.oom_markers if info else ()))):
        traceback.print_exception(error)
        return {"status": "oom", "message": f"the framework ran out of memory: {text[:500]}"}
    traceback.print_exception(error)
    return {"status": "failed", "message": f"{type(error).__name__}: {error}"}


def _gpu_index(device: str) -> int | None:
    """The NVML index of a CUDA device ("cuda" is device 0, "cuda:1" device 1); None for a CPU."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _import_backend(cell: Cell, result: dict[str, Any]) -> Backend:
    """The cell's framework, imported and built for its threads; its import time and version go into
    ``result``. A framework that cannot be imported is Unavailable."""
    from dlarena.frameworks.base import Unavailable
    from dlarena.frameworks.registry import load_backend

    start = time.perf_counter()
    try:
        backend = load_backend(cell.framework, cell.threads)
    except ImportError as error:
        raise Unavailable(f"{cell.framework} cannot be imported: {error}") from None
    result["import_s"] = time.perf_counter() - start
    result["framework_version"] = backend.version()
    return backend


def measure_cell(cell: Cell, replicas: Replicas | None = None, talk: Others | Leader | None = None) -> dict[str, Any]:
    """Build and measure one cell; every outcome becomes a result dictionary, never an exception.
    A train-dp cell's processes each call it with where they stand among its ``replicas``."""
    from dlarena.frameworks.base import StepRequest, Unsupported
    from dlarena.frameworks.registry import framework_info
    from dlarena.spec.catalogue import get_workload
    from dlarena_runner import denormals
    from dlarena_runner.resources import peak_rss_bytes

    result: dict[str, Any] = {"cell": cell.to_dict(), "status": "failed"}
    try:
        workload = get_workload(cell.workload)
        if cell.scenario not in framework_info(cell.framework).scenarios:
            raise Unsupported(f"{cell.framework} does not run the {cell.scenario!r} scenario")
        backend = _import_backend(cell, result)
        result["denormals"] = denormals.apply(backend, cell.measurement.denormals)

        request = StepRequest(
            workload=workload, scenario=cell.scenario, batch_size=cell.batch_size,
            device=cell.device, threads=cell.threads, precision=cell.precision, seed=cell.seed,
        )
        if replicas is not None and talk is not None:
            data_parallel_cell(cell, backend, request, result, replicas, talk)
        else:
            measure = train_cell if cell.scenario == "accuracy" else time_cell
            measure(cell, backend, request, result)
    except Exception as error:  # a framework's failure is data, with its traceback on stderr
        result.update(_failure(error, cell.framework))
        if replicas is not None and not replicas.leader and talk is not None:
            with contextlib.suppress(OSError):  # replica 0 may be gone already
                talk.send(error=result.get("message", str(error)))
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def probe_cell(cell: Cell, name: str, folder: str | None) -> dict[str, Any]:
    """Answer one capability probe (probes/runner.py); its outcome goes under ``probe``, and a
    framework that cannot be asked makes the worker's status unsupported or unavailable."""
    import tempfile

    from dlarena.probes.runner import answer
    from dlarena_runner.resources import peak_rss_bytes

    result: dict[str, Any] = {"cell": cell.to_dict(), "status": "failed"}
    try:
        _import_backend(cell, result)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            result["probe"] = answer(name, cell, scratch)
        result["status"] = "ok"
    except Exception as error:  # unsupported, unavailable, or a failure before the probe ran
        result.update(_failure(error, cell.framework))
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def _sampler(cell: Cell) -> ResourceSampler | None:
    """The resource sampler the cell asks for, or None when its interval is 0 (sampling off)."""
    from dlarena_runner.sampler import ResourceSampler

    interval = cell.measurement.sample_interval_s
    return ResourceSampler(interval, _gpu_index(cell.device)) if interval > 0 else None


def time_cell(cell: Cell, backend: Backend, request: StepRequest, result: dict[str, Any]) -> None:
    """The train and infer scenarios: build, warm up and time steps on a synthetic batch.

    ``result`` is filled as the cell goes, so that a failure while stepping keeps its build figures."""
    from dlarena_runner.resources import current_rss_bytes
    from dlarena_runner.timing import run_timed

    start = time.perf_counter()
    runner = backend.prepare(request)
    result["build_s"] = time.perf_counter() - start
    result["params"] = runner.trainable_params()
    result["flops_per_step"] = request.workload.flops(cell.scenario, cell.batch_size)
    rss_before = current_rss_bytes()
    sampler = _sampler(cell)
    timings = run_timed(runner.step, runner.sync, cell.measurement, steady=sampler)
    resources = sampler.report() if sampler else {}
    subnormals = _probe_denormals(backend, cell, result)
    read_device_peak = getattr(runner, "device_memory_peak_bytes", None)
    device_peak = read_device_peak() if read_device_peak is not None else None
    if device_peak is not None:
        resources["device_memory_peak_bytes"] = device_peak
    result.update({
        "resources": resources,
        "status": "ok",
        **_timing_record(timings),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": current_rss_bytes(),
        "parity": vars(replace(runner.parity(), denormals=subnormals)),
    })


def _timing_record(timings: Timings) -> dict[str, Any]:
    """The timed loop's figures as a result stores them."""
    return {"first_step_s": timings.first_step_s, "warmup_s": timings.warmup_s, "samples_s": timings.samples_s,
            "loop_wall_s": timings.loop_wall_s, "loop_cpu_s": timings.loop_cpu_s, "cores_used": timings.cores_used}


def data_parallel_cell(cell: Cell, backend: Backend, request: StepRequest, result: dict[str, Any],
                       replicas: Replicas, talk: Others | Leader) -> None:
    """The train-dp scenario (frameworks/data_parallel.py): this replica's slice, the check against one
    process on the whole batch, then steps in lockstep; replica 0's result holds the cell's figures."""
    from dlarena.frameworks.data_parallel import Others, check, lockstep, require_runtime

    require_runtime(backend)
    start = time.perf_counter()
    runner, runtime = backend.prepare_replica(request, replicas)  # type: ignore[attr-defined]
    result["build_s"] = time.perf_counter() - start
    result["params"] = runner.trainable_params()
    result["flops_per_step"] = request.workload.flops("train", cell.batch_size)
    figures = check(backend, request, runner, replicas, talk)
    timings = lockstep(runner, cell.measurement, replicas, talk)
    if not replicas.leader:
        result["status"] = "ok"
        return
    assert isinstance(talk, Others) and figures is not None
    talk.finish()
    result.update(_timing_record(timings))
    result["data_parallel"] = {"replicas": replicas.size, "per_replica_batch": cell.batch_size // replicas.size,
                               "runtime": runtime, "check": figures}
    result["parity"] = vars(runner.parity())
    if figures["passed"]:
        result["status"] = "ok"
    else:
        result.update(status="failed", message=(
            f"one data-parallel step does not compute what one process does on the whole batch: gradient"
            f" {figures['gradient_error']:.2e} off (worst: {figures['worst_parameter']}, limit"
            f" {figures['gradient_tolerance']:.1e}), loss {figures['loss_error']:.2e} off (limit"
            f" {figures['loss_tolerance']:.1e})"))


def train_cell(cell: Cell, backend: Backend, request: StepRequest, result: dict[str, Any]) -> None:
    """The accuracy scenario: load the real data, train from the shared starting weights, test."""
    from dlarena.data import load_dataset
    from dlarena.frameworks.base import Unsupported
    from dlarena.spec.weights import initial_weights
    from dlarena_runner.resources import current_rss_bytes
    from dlarena_runner.training import train_to_accuracy

    workload = request.workload
    plan = workload.training
    if plan is None:
        raise Unsupported(f"{workload.name} has no real data set to train on; workloads with one: "
                          f"{', '.join(_trainable_workloads())}")
    network = workload.network
    start = time.perf_counter()
    dataset = load_dataset(plan.dataset, vocab=network.vocab or None,
                           steps=network.input_shape[0] if network.input_kind == "tokens" else None)
    data_load_s = time.perf_counter() - start
    for split, part in (("training", dataset.train), ("test", dataset.test)):
        if part.inputs.shape[1:] != network.input_shape:
            raise Unsupported(f"the {plan.dataset} {split} inputs are {part.inputs.shape[1:]}, but "
                              f"{workload.name} takes {network.input_shape}")
    start = time.perf_counter()
    trainer = backend.trainer(request)
    trainer.load_weights(initial_weights(network, workload.recipe.init, cell.seed))
    build_s = time.perf_counter() - start

    rss_before = current_rss_bytes()
    sampler = _sampler(cell)
    run = train_to_accuracy(
        trainer, (dataset.train.inputs, dataset.train.labels), (dataset.test.inputs, dataset.test.labels),
        cell.batch_size, cell.epochs or plan.epochs, cell.target_accuracy, cell.seed, steady=sampler,
    )
    subnormals = _probe_denormals(backend, cell, result)
    result.update({
        "status": "ok",
        "params": trainer.trainable_params(),
        "flops_per_step": workload.flops("train", cell.batch_size),
        "build_s": build_s,
        "first_step_s": run.first_step_s,
        "warmup_s": [],
        "samples_s": run.samples_s,
        "loop_wall_s": run.loop_wall_s,
        "loop_cpu_s": run.loop_cpu_s,
        "cores_used": run.loop_cpu_s / run.loop_wall_s if run.loop_wall_s > 0 else 0.0,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": current_rss_bytes(),
        "resources": sampler.report() if sampler else {},
        "parity": vars(replace(trainer.parity(), denormals=subnormals)),
        "accuracy": {
            "dataset": plan.dataset, "train_samples": len(dataset.train), "test_samples": len(dataset.test),
            "epochs_planned": cell.epochs or plan.epochs, "data_load_s": data_load_s, **run.to_dict(),
        },
    })


def _probe_denormals(backend: Backend, cell: Cell, result: dict[str, Any]) -> str:
    """The subnormal mode the cell's steps ran in, measured after them (dlarena_runner/denormals.py).

    Its record replaces what ``measure_cell`` stored when it set the mode; a ``flush`` cell whose
    framework still kept subnormals raises Unsupported."""
    from dlarena_runner import denormals

    result["denormals"] = denormals.probe(backend, cell.device, result["denormals"])
    return str(result["denormals"]["measured"])


def _trainable_workloads() -> list[str]:
    from dlarena.spec.catalogue import CATALOGUE

    return [name for name, workload in CATALOGUE.items() if workload.training is not None]


def verify_cell(cell: Cell, folder: str, workloads: list[str] | None = None) -> dict[str, Any]:
    """Compute one framework's outputs for canonical weights and inputs, for every network asked.

    One process serves every network of a framework and precision: importing a framework costs
    seconds, computing a small twin milliseconds. Each network's arrays go to ``folder/NAME.npz``;
    its status, in ``result["workloads"][NAME]``, is its own, so that one network that fails or is
    unsupported leaves the others checked. The comparison with the oracle and with other frameworks
    happens in the verify command, which never imports a framework; here we only compute, and check
    the weight round trip.
    """
    import gc


    names = workloads or [cell.workload]
    result: dict[str, Any] = {"cell": cell.to_dict(), "status": "failed", "workloads": {}}
    os.makedirs(folder, exist_ok=True)
    progress_path = os.path.join(folder, VERIFY_PROGRESS_FILE)
    try:
        backend = _import_backend(cell, result)
    except Exception as error:  # the framework is absent or broken: every network shares its status
        result.update(_failure(error, cell.framework))
        return result
    with open(progress_path, "a", encoding="utf-8") as progress:
        for name in names:
            progress.write(json.dumps({"workload": name, "event": "start"}) + "\n")
            progress.flush()  # in the kernel's hands: a crash of this process does not lose it
            start = time.perf_counter()
            record = _verify_network(backend, cell, name, os.path.join(folder, f"{name}.npz"))
            record["wall_s"] = time.perf_counter() - start
            result["workloads"][name] = record
            progress.write(json.dumps({"workload": name, "event": "done", **record}) + "\n")
            progress.flush()
            gc.collect()  # a published network's float64 copy is gigabytes: free it before the next
    result["status"] = "ok"
    return result


def _verify_network(backend: Backend, cell: Cell, name: str, arrays_path: str) -> dict[str, Any]:
    """One network's outputs and gradients into ``arrays_path``; its status, never an exception."""
    import numpy as np

    from dlarena.frameworks.base import Unsupported
    from dlarena.frameworks.precision import as_stored
    from dlarena.frameworks.precision import precision as precision_of
    from dlarena.spec.catalogue import get_workload
    from dlarena.spec.weights import canonical_batch, canonical_weights

    record: dict[str, Any] = {"status": "failed"}
    try:
        workload = get_workload(name)
        checker = backend.checker(workload, cell.device, cell.precision)
        record["params"] = checker.trainable_params()
        # Canonical float32 values are exact in float64: both precisions compute the same function. In
        # bfloat16 they are rounded first, so that the round trip compares what the framework can hold.
        dtype = precision_of(cell.precision).host_dtype
        weights = {key: as_stored(value, cell.precision)
                   for key, value in canonical_weights(workload.network, cell.seed).items()}
        checker.load_weights(weights)
        exported = checker.export_weights()
        record["roundtrip_differs"] = sorted(
            key for key in set(weights) | set(exported)
            if key not in weights or key not in exported or exported[key].dtype != dtype
            or not np.array_equal(weights[key], exported[key])
        )
        del exported
        inputs, labels = canonical_batch(workload.network, cell.batch_size, cell.seed)
        if workload.network.input_kind != "tokens":
            inputs = inputs.astype(dtype)
        arrays = {"logits": np.asarray(checker.forward(inputs))}
        # What its matrix products ran in, where the module reads it back (kernel modules' parity).
        parity = getattr(checker, "parity", None)
        computed_in = parity().details.get("matmul_dtype") if callable(parity) else None
        if computed_in:
            record["matmul_dtype"] = str(computed_in)
        try:
            loss, gradients = checker.loss_and_gradients(inputs, labels)
            arrays["loss"] = np.asarray(loss, dtype=np.float64)
            arrays.update({f"grad/{key}": np.asarray(value) for key, value in gradients.items()})
            record["gradients"] = True
        except Unsupported as error:
            record["gradients"] = False
            record["gradients_message"] = str(error)
        np.savez(arrays_path, **arrays)  # type: ignore[arg-type]  # NumPy's stub types **kwds as bool
        record["status"] = "ok"
    except Exception as error:
        record.update(_failure(error, cell.framework))
    return record


def _replicas(cell: Cell, args: argparse.Namespace) -> tuple[Replicas | None, Others | Leader | None]:
    """Where this process stands in a train-dp cell (replica 0 starts the others here), else nothing."""
    if cell.scenario != DATA_PARALLEL_SCENARIO or args.verify or args.probe:
        return None, None
    from dlarena.frameworks.data_parallel import Leader, Replicas, rendezvous_address, start_others

    if args.replica is None:
        address = rendezvous_address()
        return Replicas(0, cell.replicas, address), start_others(args.cell, cell.replicas, address)
    return Replicas(args.replica, cell.replicas, args.rendezvous), Leader()


def _watch(talk: Others | Leader | None, cell: Cell, out: str | None) -> None:
    """Replica 0: should another replica fail, store the cell as failed and end all of them at once."""
    from dlarena.frameworks.data_parallel import Others, kill_the_cell

    if isinstance(talk, Others):
        talk.watch(kill_the_cell(lambda message: write_result(
            {"cell": cell.to_dict(), "status": "failed", "message": message}, out)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlarena.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True, help="the cell as JSON, as stored with its result")
    parser.add_argument("--out", help="write the JSON result here (default: standard output)")
    parser.add_argument("--verify", metavar="FOLDER",
                        help="verification mode: write each network's outputs and gradients to FOLDER/NAME.npz")
    parser.add_argument("--workloads", help="with --verify: comma-separated networks (default: the cell's)")
    parser.add_argument("--probe", metavar="NAME", help="capability mode: answer this probe (dlarena/probes)")
    # A train-dp cell's replicas 1.. are started by its replica 0 (frameworks/data_parallel.py), never by hand.
    parser.add_argument("--replica", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rendezvous", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cell = Cell.from_json(args.cell)
    except (ValueError, TypeError) as error:
        parser.error(f"--cell is not a valid cell: {error}")
    if args.probe and args.probe not in PROBES:
        parser.error(f"--probe {args.probe!r} is not a probe; valid probes: {', '.join(sorted(PROBES))}")
    if args.out or args.replica is not None:  # started by an orchestrator, or by replica 0
        die_with_parent()
    replicas, talk = _replicas(cell, args)  # before the cores are limited: the others get cores of their own
    malloc = fix_malloc_thresholds()  # before anything allocates much: NumPy, a framework
    allowed = sorted(os.sched_getaffinity(0))
    affinity = limit_threads(cell.threads, first=replicas.rank * cell.threads if replicas else 0)
    if args.probe and not probe_info(args.probe).pinned:  # the thread variables stay; every core is allowed
        os.sched_setaffinity(0, allowed)
        affinity = allowed
    variables = apply_framework_variables(cell.framework)
    compile_cache, cache_folder = isolate_compile_caches(
        cell.measurement.compile_cache, os.path.dirname(os.path.abspath(args.out)) if args.out else None)
    try:
        if args.verify:
            result = verify_cell(cell, args.verify, args.workloads.split(",") if args.workloads else None)
        elif args.probe:
            result = probe_cell(cell, args.probe, os.path.dirname(os.path.abspath(args.out)) if args.out else None)
        else:
            if replicas is not None and replicas.leader:
                _watch(talk, cell, args.out)
            result = measure_cell(cell, replicas, talk)
    finally:
        if cache_folder is not None:
            import shutil

            shutil.rmtree(cache_folder, ignore_errors=True)
    if replicas is not None and not replicas.leader:  # replica 0 writes the cell's result
        return 0 if result.get("status") == "ok" else 1
    result["affinity"] = affinity
    result["framework_variables"] = variables
    result["environment"] = environment_record()
    result["malloc"] = malloc
    result["compile_cache"] = compile_cache
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
