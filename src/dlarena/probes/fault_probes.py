"""The test-only fault frameworks' answers to the probes (frameworks/fault.py): NumPy, right for
``fault-none``, deliberately wrong for ``fault-wrong`` (each in the way a real framework could be
wrong), and the injected fault for the others, so that every probe's failure can be proven."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from dlarena.frameworks.base import Unavailable, Unsupported
from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext

# fault-wrong's errors: each well past checks.TOLERANCE, as a sign slip or a missed term would be.
WRONG_SCALE = 1.01


def _fault(context: ProbeContext) -> str:
    """The framework's fault; the ones that strike before any answer strike here."""
    fault = context.framework.removeprefix("fault-")
    if fault == "raise":
        raise RuntimeError("injected failure while answering the probe")
    if fault == "unsupported":
        raise Unsupported("the fault-unsupported framework cannot express this probe (injected)")
    if fault == "unavailable":
        raise Unavailable("the fault-unavailable framework's device is missing (injected)")
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    return fault


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()
    x = problem.x.astype(np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-checks.ALPHA * x))
    gradient = problem.weights * (sigmoid + checks.ALPHA * x * sigmoid * (1.0 - sigmoid))  # by hand
    if _fault(context) == "wrong":
        gradient = problem.weights * sigmoid  # the product rule's second term forgotten
    return {"gradient_error": checks.check("the gradient", gradient, problem.reference_gradient())}


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    answer = problem.reference_hvp()
    if _fault(context) == "wrong":
        answer = tuple(WRONG_SCALE * part for part in answer)
    return {"hvp_error": checks.check_hvp(problem, answer)}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    problem = checks.loop_problem()
    answer = problem.reference()
    if _fault(context) == "wrong":  # a loop that tests its condition once too few
        answer = [problem.run(problem.matrix.astype(np.float64), start) for start in problem.starts]
        answer = [(steps - 1, final) for steps, final in answer]
    return {"error": checks.check_loop(problem, "eager", answer), "gradient": False,
            "gradient_note": "NumPy has no autodiff"}


def variable_length(context: ProbeContext) -> dict[str, Any]:
    problem = checks.sequence_problem()
    lengths = problem.lengths
    if _fault(context) == "wrong":  # the padding run over as if it were data
        lengths = np.full_like(lengths, problem.inputs.shape[1])
    reference = checks.SequenceProblem(problem.inputs, lengths, problem.input_kernel, problem.recurrent_kernel,
                                       problem.bias).reference()
    return {"error": checks.check("the final hidden states", reference, problem.reference()), "method": "NumPy"}


def multi_device(context: ProbeContext) -> dict[str, Any]:
    """Two 'devices' as two halves of the batch, each half's gradient by hand; fault-wrong sums the
    halves' mean gradients where a data-parallel step averages them."""
    problem = checks.hessian_problem()
    halves = [checks.HessianProblem(problem.inputs[part], problem.labels[part], problem.params, problem.vector)
              for part in np.array_split(np.arange(len(problem.labels)), checks.DEVICES)]
    combine = np.sum if _fault(context) == "wrong" else np.mean
    gradients = [combine(np.stack(parts), axis=0) for parts in zip(*(half.loss_gradient(problem.params)
                                                                      for half in halves), strict=True)]
    loss = float(np.mean([checks.mean_loss(half) for half in halves]))
    error = checks.check_data_parallel(problem, "two halves", loss, gradients)
    return {"gradient_error": error, "devices": checks.DEVICES, "method": "NumPy, by hand"}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------
# NumPy has no exporter, no ahead-of-time compiler and no mobile runtime: every artefact of the fault
# frameworks is the weights in an .npz file, run by the NumPy oracle, and the ONNX file is written with
# onnx.helper. fault-wrong's own output is off by WRONG_SCALE (frameworks/fault.py), so every reloaded
# artefact differs from it, as a lossy exporter's would.

DEPLOY_WORKLOADS = ("digits-mlp",)  # the fault frameworks build Dense layers only


def deployable(checker: Any, inputs: np.ndarray) -> tuple[Any, np.ndarray]:
    return checker, inputs


def save(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    with open(path, "wb") as handle:
        np.savez(handle, **model.export_weights())
    return "NumPy .npz"


def load(path: Any, workload: Any) -> Any:
    from dlarena.spec import reference

    with np.load(path) as stored:
        weights = {name: stored[name] for name in stored.files}
    return lambda inputs: reference.forward(workload.network, weights, inputs).astype(np.float32)


aot_export = mobile_export = save
aot_load = mobile_load = load


def export_onnx(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    """digits-mlp (Flatten, Dense, ReLU, Dense) as an ONNX graph, written with onnx.helper."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise Unavailable("onnx is not installed") from None
    weights = model.export_weights()
    nodes = [helper.make_node("Flatten", ["inputs"], ["flat"]),
             helper.make_node("Gemm", ["flat", "1.kernel", "1.bias"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("Gemm", ["active", "3.kernel", "3.bias"], ["logits"])]
    graph = helper.make_graph(nodes, "digits-mlp",
                              [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(value, name) for name, value in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    return "onnx.helper"
