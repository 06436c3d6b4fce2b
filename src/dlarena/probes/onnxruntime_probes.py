"""ONNX Runtime's answers to the capability probes (``onnxruntime``).

ONNX Runtime is an inference engine for ONNX graphs: the ``onnxruntime`` package computes no gradients
(training is the separate onnxruntime-training build), so the probes that ask for one are unsupported,
and it exports nothing, since its input already is the portable artefact. What it does answer: its
native format (the ONNX file that the onnxruntime framework writes from the spec, onnx_graph.py),
loaded in a fresh process; ONNX Runtime Mobile's ORT format, converted by onnxruntime's own tool; the
cold start; and, in its graph, a data-dependent ``Loop`` and an ``LSTM`` with per-sequence lengths.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dlarena.frameworks.onnx_graph import IR_VERSION, OPSET
from dlarena.probes import checks
from dlarena.probes.deployment import load_onnx
from dlarena.probes.runner import ProbeContext

NO_GRADIENTS = ("the onnxruntime package is inference only: it computes no gradients (training is the separate"
                " onnxruntime-training build)")
UNSUPPORTED = {
    "custom-layer": NO_GRADIENTS,
    "higher-order": NO_GRADIENTS,
    "multi-device": NO_GRADIENTS + ", so it has no training step to run data-parallel",
    "export-onnx": "ONNX Runtime exports nothing: its input is already the ONNX file (see save-load)",
    "aot-export": "ONNX Runtime has no ahead-of-time compiler of its own: the ONNX file it loads is already the"
                  " Python-free artefact (see save-load and mobile)",
}
# ORT format conversion: onnxruntime's documented tool for ONNX Runtime Mobile (.ort files).
ORT_CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
CONVERT_TIMEOUT_S = 120.0
# What the converter writes for model.onnx: the ORT file with the optimisations that any build can run
# (it also writes a variant with runtime optimisations, and a config of the operators used).
ORT_FILE = "model.ort"


def _session(model: onnx.ModelProto | bytes | str) -> Any:
    serialized = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    """ONNX's ``Loop`` with a condition computed in its body: x <- tanh(A x) while |x| > threshold. The
    body also emits its iteration number as a scan output, whose length is the loop's step count."""
    problem = checks.loop_problem()
    floats = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("MatMul", ["A", "x_in"], ["ax"]), helper.make_node("Tanh", ["ax"], ["x_out"]),
         helper.make_node("ReduceL2", ["x_out"], ["norm"], keepdims=0),
         helper.make_node("Greater", ["norm", "threshold"], ["cond_out"]),
         helper.make_node("Identity", ["i"], ["step"])],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", floats, [8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", floats, [8]),
         helper.make_tensor_value_info("step", TensorProto.INT64, [])])
    graph = helper.make_graph(
        [helper.make_node("ReduceL2", ["x"], ["norm0"], keepdims=0),
         helper.make_node("Greater", ["norm0", "threshold"], ["cond0"]),
         helper.make_node("Loop", ["limit", "cond0", "x"], ["final", "steps"], body=body)],
        "dynamic-loop", [helper.make_tensor_value_info("x", floats, [8])],
        [helper.make_tensor_value_info("final", floats, [8]),
         helper.make_tensor_value_info("steps", TensorProto.INT64, ["steps"])],
        [numpy_helper.from_array(problem.matrix, "A"),
         numpy_helper.from_array(np.array(checks.LOOP_THRESHOLD, dtype=np.float32), "threshold"),
         numpy_helper.from_array(np.array(checks.LOOP_LIMIT, dtype=np.int64), "limit")])
    session = _session(_model(graph))
    answer = [(len(steps), final) for final, steps in (session.run(None, {"x": start}) for start in problem.starts)]
    error = checks.check_loop(problem, "ONNX Loop", answer)
    return {"error": error, "modes": "ONNX Loop", "gradient": False, "gradient_note": NO_GRADIENTS}


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """ONNX's ``LSTM`` given each sequence's length (``sequence_lens``): its Y_h is each one's last state."""
    problem = checks.sequence_problem()
    hidden = problem.hidden
    # ONNX Runtime's CPU LSTM takes time-major input only (it rejects layout=1, batch-major).
    time_major = np.ascontiguousarray(problem.inputs.transpose(1, 0, 2))

    def onnx_gates(array: np.ndarray) -> np.ndarray:  # the problem's gate order i, f, g, o; ONNX's i, o, f, c
        i, f, g, o = np.split(array, 4)
        return np.concatenate([i, o, f, g])

    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "B", "lengths"], ["", "Y_h"], hidden_size=hidden)],
        "variable-length",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(time_major.shape)),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, [len(problem.lengths)])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, len(problem.lengths), hidden])],
        [numpy_helper.from_array(onnx_gates(problem.input_kernel)[None], "W"),
         numpy_helper.from_array(onnx_gates(problem.recurrent_kernel)[None], "R"),
         numpy_helper.from_array(np.concatenate([onnx_gates(problem.bias), np.zeros(4 * hidden, np.float32)])[None],
                                 "B")])
    final = _session(_model(graph)).run(None, {"X": time_major, "lengths": problem.lengths.astype(np.int32)})[0]
    return {"error": checks.check("the final hidden states", final[0], problem.reference()),
            "method": "ONNX LSTM sequence_lens"}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------


def deployable(checker: Any, inputs: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The serialised ONNX model the onnxruntime framework runs, with the loaded weights."""
    return checker.model.graph.serialize(), inputs


def save(model: bytes, native_inputs: np.ndarray, path: Path) -> str:
    path.write_bytes(model)
    return "ONNX (protobuf)"


load = load_onnx  # the fresh process reads the file with ONNX Runtime, as deployment's ONNX loader does


def mobile_export(model: bytes, native_inputs: np.ndarray, path: Path) -> str:
    """ONNX Runtime Mobile's ORT format, written by onnxruntime's own converter into the folder ``path``."""
    path.mkdir()
    source = path / "model.onnx"
    source.write_bytes(model)
    done = subprocess.run([sys.executable, "-m", ORT_CONVERTER, str(source)], capture_output=True, text=True,
                          timeout=CONVERT_TIMEOUT_S)
    if done.returncode != 0 or not (path / ORT_FILE).exists():
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise checks.ProbeFailure(f"{ORT_CONVERTER} failed: {last}")
    for other in path.iterdir():  # the folder keeps only what goes on the device
        if other.name != ORT_FILE:
            other.unlink()
    return f"ORT format ({ORT_CONVERTER})"


def mobile_load(path: Path, workload: Any) -> Any:
    return load_onnx(Path(path) / ORT_FILE, workload)
