"""The deployment probes, written once for every framework: ``export-onnx``, ``save-load``,
``aot-export``, ``mobile`` and ``cold-start``.

Each takes catalogue workloads (a CNN and an LSTM), builds them with the framework's own module (its
checker, as `dlarena verify` does) holding dlarena's canonical weights, and asks the framework's
probe module only for what differs between frameworks, its *hooks*:

- ``deployable(checker, inputs) -> (model, native_inputs)``: the object the framework exports or
  saves, and the canonical batch in the layout that object takes;
- ``save(model, native_inputs, path) -> format`` and ``load(path, workload) -> run``: its native format;
- ``export_onnx(model, native_inputs, path) -> exporter``: an ONNX file, run here by ONNX Runtime;
- ``aot_export(model, native_inputs, path) -> method`` and ``aot_load(path, workload) -> run``;
- ``mobile_export(model, native_inputs, path) -> runtime`` and ``mobile_load(path, workload) -> run``
  (or ``MOBILE_LOADER = LITERT_LOADER`` for a LiteRT file).

Each writer writes its artefact (a file or a folder) at ``path`` and returns the name of its format or
method; a ``run`` maps native inputs to the logits. Every artefact is loaded and run in a *fresh process*
(probes/fresh.py), which proves the file stands alone, and its logits are compared with the
framework's own output for the same inputs (checks.check_deployed). A module without a hook answers
``unsupported`` with the reason its ``UNSUPPORTED`` mapping gives for the probe.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dlarena.frameworks.base import Unavailable, Unsupported
from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext

# The workloads deployed: a CNN (the digits workload dlarena trains to accuracy) and a two-layer
# LSTM language model; a framework module can name others in DEPLOY_WORKLOADS (the fault frameworks
# have only Dense layers). cold-start times the first only: one number per framework.
DEPLOY_WORKLOADS = ("digits-cnn", "lstm32-small")
DEPLOY_BATCH = 4
DEPLOY_SEED = 0
# A fresh process loads and runs an artefact within this time or the probe fails: loading a framework
# takes seconds (TensorFlow's import about 5 s here), an export's artefact no longer than the export.
FRESH_PROCESS_TIMEOUT_S = 240.0
ONNX_LOADER = "dlarena.probes.deployment:load_onnx"
# A LiteRT file's loader: a framework module that converts to LiteRT names it as its MOBILE_LOADER
# instead of writing a mobile_load hook, and the fresh process then imports no framework at all.
LITERT_LOADER = "dlarena.probes.deployment:load_litert"


def _module(context: ProbeContext) -> ModuleType:
    from dlarena.frameworks.registry import framework_info

    name = framework_info(context.framework).probes
    if name is None:
        raise Unsupported(f"{context.framework} has no probe module yet")
    return importlib.import_module(name)


def hook(module: ModuleType, probe: str, name: str) -> Callable[..., Any]:
    """A hook of the framework's probe module, or Unsupported with the module's reason."""
    function = getattr(module, name, None)
    if function is None:
        reasons: dict[str, str] = getattr(module, "UNSUPPORTED", {})
        raise Unsupported(reasons.get(probe) or f"{module.__name__} has no {name} hook for the {probe!r} probe")
    return function  # type: ignore[no-any-return]


class Deployed:
    """One workload built by the framework with the canonical weights: its model, inputs and own logits."""

    def __init__(self, context: ProbeContext, module: ModuleType, probe: str, workload_name: str) -> None:
        from dlarena.frameworks.registry import load_backend
        from dlarena.spec.catalogue import get_workload
        from dlarena.spec.weights import canonical_batch, canonical_weights

        self.workload = get_workload(workload_name)
        backend = load_backend(context.framework, context.threads)
        checker = backend.checker(self.workload, "cpu", "float32")
        checker.load_weights(canonical_weights(self.workload.network, DEPLOY_SEED))
        inputs, _ = canonical_batch(self.workload.network, DEPLOY_BATCH, DEPLOY_SEED)
        self.own = np.asarray(checker.forward(inputs))
        self.model, self.native_inputs = hook(module, probe, "deployable")(checker, inputs)
        self.folder = Path(context.folder) / workload_name
        self.folder.mkdir(exist_ok=True)
        np.save(self.folder / "inputs.npy", np.asarray(self.native_inputs))

    def compare(self, what: str, logits: np.ndarray) -> float:
        return checks.check_deployed(f"{self.workload.name}: {what}", logits, self.own)


def run_fresh(loader: str, loads: list[tuple[Deployed, Path]]) -> list[dict[str, Any]]:
    """Load each artefact with ``loader`` ("module:function") in one fresh process and run it on its
    workload's inputs: per artefact, the logits, the child's clocks (its interpreter's start and the
    loader module's import, shared, then the artefact's load and first call) and ``answer_s``, from the
    process's start to that artefact's answer, both read on the wall clock; ``exit_s``, how long the
    process took to exit after its last answer."""
    arguments = [loader]
    for deployed, artefact in loads:
        arguments += [str(artefact), deployed.workload.name, str(deployed.folder / "inputs.npy"),
                      str(deployed.folder / "outputs.npy")]
    names = ", ".join(artefact.name for _, artefact in loads)
    spawned_at = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "dlarena.probes.fresh", *arguments], capture_output=True,
                              text=True, timeout=FRESH_PROCESS_TIMEOUT_S, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        raise checks.ProbeFailure(f"the fresh process loading {names} did not answer within"
                                  f" {FRESH_PROCESS_TIMEOUT_S:.0f} s") from None
    exited_at = time.time()
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]
    try:
        clocks: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise checks.ProbeFailure(f"a fresh process could not load and run {names}: {last}"[:500]) from None
    # Every artefact answered: a process that then fails on its way out (keras-torch's variables'
    # finalisers) did what the probe asks; its exit is kept with the figures, for the reader.
    exit_failure = {"exit_failure": f"exit status {done.returncode}: {last}"} if done.returncode != 0 else {}
    return [{**item, **exit_failure, "interpreter_s": clocks["interpreter_s"], "import_s": clocks["import_s"],
             "answer_s": item["answered_at"] - spawned_at, "exit_s": exited_at - clocks["items"][-1]["answered_at"],
             "logits": np.load(deployed.folder / "outputs.npy")}
            for item, (deployed, _) in zip(clocks["items"], loads, strict=True)]


def _workloads(module: ModuleType) -> tuple[str, ...]:
    return tuple(getattr(module, "DEPLOY_WORKLOADS", DEPLOY_WORKLOADS))


def _size(path: Path) -> int:
    """An artefact's bytes: a file's size, or a folder's (a SavedModel) files' sizes summed."""
    if path.is_dir():
        return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    return path.stat().st_size


def _export_and_reload(context: ProbeContext, probe: str, export: str, loader: Callable[[ModuleType], str],
                       suffix: str) -> dict[str, Any]:
    """Export every deploy workload with hook ``export``, reload each artefact in a fresh process, compare."""
    module = _module(context)
    exporter = hook(module, probe, export)
    load_with = loader(module)
    loads = []
    for name in _workloads(module):
        deployed = Deployed(context, module, probe, name)
        artefact = deployed.folder / f"{name}{suffix}"
        try:
            method = exporter(deployed.model, deployed.native_inputs, artefact)
        except ModuleNotFoundError as error:  # the exporter's package (tf2onnx, onnxscript, ...) is not installed
            raise Unavailable(f"{export} needs {error.name}, which is not installed here") from None
        loads.append((deployed, artefact))
    figures: dict[str, Any] = {"method": str(method)}
    for (deployed, artefact), reloaded in zip(loads, run_fresh(load_with, loads), strict=True):
        figures[deployed.workload.name] = {
            "bytes": _size(artefact), "load_s": round(reloaded["load_s"], 4),
            "error": deployed.compare(f"the {probe} artefact's output", reloaded["logits"])}
        if "exit_failure" in reloaded:
            figures["exit_failure"] = reloaded["exit_failure"]
    figures["error"] = max(figures[name]["error"] for name in _workloads(module))
    figures["load_s"] = max(figures[name]["load_s"] for name in _workloads(module))
    return figures


def _hook_path(module: ModuleType, probe: str, name: str) -> str:
    hook(module, probe, name)  # present, or Unsupported
    return f"{module.__name__}:{name}"


def export_onnx(context: ProbeContext) -> dict[str, Any]:
    """Exported to ONNX by the framework's (or its ecosystem's) exporter, run by ONNX Runtime."""
    return _export_and_reload(context, "export-onnx", "export_onnx", lambda module: ONNX_LOADER, ".onnx")


def save_load(context: ProbeContext) -> dict[str, Any]:
    """Saved in the framework's native format, loaded by the framework in a fresh process."""
    return _export_and_reload(context, "save-load", "save", lambda module: _hook_path(module, "save-load", "load"),
                              ".saved")


def aot_export(context: ProbeContext) -> dict[str, Any]:
    """An ahead-of-time artefact (torch.export, jax.export, SavedModel), reloaded and run."""
    return _export_and_reload(context, "aot-export", "aot_export",
                              lambda module: _hook_path(module, "aot-export", "aot_load"), ".aot")


def mobile(context: ProbeContext) -> dict[str, Any]:
    """Converted for an on-device runtime, run by that runtime's interpreter on this machine (the
    module's MOBILE_LOADER, such as LITERT_LOADER, or its mobile_load hook)."""
    return _export_and_reload(context, "mobile", "mobile_export",
                              lambda module: getattr(module, "MOBILE_LOADER", None)
                              or _hook_path(module, "mobile", "mobile_load"), ".mobile")


def cold_start(context: ProbeContext) -> dict[str, Any]:
    """From a fresh process to the first result of a saved model: interpreter start, import, load, first
    call, as one number (from the parent's start of the process to the child's answer, both read on the
    wall clock) and its parts (the child's own clocks); the process's exit after it apart."""
    module = _module(context)
    name = _workloads(module)[0]
    deployed = Deployed(context, module, "cold-start", name)
    artefact = deployed.folder / f"{name}.saved"
    saved_as = hook(module, "cold-start", "save")(deployed.model, deployed.native_inputs, artefact)
    (reloaded,) = run_fresh(_hook_path(module, "cold-start", "load"), [(deployed, artefact)])
    error = deployed.compare("the cold-started model's output", reloaded["logits"])
    return {"cold_start_s": round(reloaded["answer_s"], 3), "interpreter_s": round(reloaded["interpreter_s"], 3),
            "import_s": round(reloaded["import_s"], 3), "load_s": round(reloaded["load_s"], 4),
            "exit_s": round(reloaded["exit_s"], 3),
            "first_call_s": round(reloaded["first_call_s"], 4), "workload": name, "format": str(saved_as),
            "error": error, **({"exit_failure": reloaded["exit_failure"]} if "exit_failure" in reloaded else {})}


def load_onnx(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX file in an ONNX Runtime session on the CPU: its first input fed, its first output read."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # a probe, not a timing
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    element = np.int64 if "int64" in feed.type else np.int32 if "int32" in feed.type else np.float32

    def run(inputs: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {feed.name: inputs.astype(element)})[0])

    return run


def load_litert(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A .tflite file in LiteRT's interpreter (ai_edge_litert, no TensorFlow): its first input fed, its
    first output read. The mobile hook of every framework that converts to LiteRT."""
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

    if Path(path).is_dir():  # an exporter that writes a folder (Keras): its one .tflite file
        (path,) = Path(path).glob("*.tflite")
    interpreter = Interpreter(model_path=str(path), num_threads=1)  # a probe, not a timing
    interpreter.allocate_tensors()
    (feed, *_), (output, *_) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(inputs: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(feed["index"], inputs.astype(feed["dtype"]))
        interpreter.invoke()
        return np.asarray(interpreter.get_tensor(output["index"]))

    return run
