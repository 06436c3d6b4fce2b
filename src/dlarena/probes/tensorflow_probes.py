"""TensorFlow's answers to the capability probes: ``tensorflow`` runs each as a ``tf.function`` graph,
``tensorflow-xla`` as ``tf.function(jit_compile=True)``, the framework's own modes (as
frameworks/tensorflow_native.py runs its cells). No Keras: tf ops, tf.GradientTape and tf's control flow.

The mobile probe's fresh process runs the LiteRT file with deployment.load_litert, which imports
ai_edge_litert alone: the runtime needs no TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from dlarena.probes import checks
from dlarena.probes.deployment import LITERT_LOADER
from dlarena.probes.runner import ProbeContext

# multi-device's child process imports TensorFlow, traces and runs one step: 55 s measured on this
# 2-core machine under load (TensorFlow's import alone 14 s); the deployment probes' fresh-process limit.
MULTI_DEVICE_TIMEOUT_S = 240.0


def _graph(context: ProbeContext, function: Callable[..., Any]) -> Any:
    """The function as the framework asked runs it: a tf.function, compiled by XLA for tensorflow-xla."""
    return tf.function(function, jit_compile=context.framework == "tensorflow-xla")


def _mode(context: ProbeContext) -> str:
    return "tf.function(jit_compile=True)" if context.framework == "tensorflow-xla" else "tf.function"


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()

    def activation(x: tf.Tensor) -> tf.Tensor:  # the new layer, from TensorFlow's own ops
        return x * tf.sigmoid(checks.ALPHA * x)

    def gradient(x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)  # a constant, not a Variable: the tape only follows it when told
            loss = tf.reduce_sum(weights * activation(x))
        return tape.gradient(loss, x)

    answer = _graph(context, gradient)(tf.constant(problem.x), tf.constant(problem.weights))
    error = checks.check("the gradient of x * sigmoid(1.5 x)", answer.numpy(), problem.reference_gradient())
    return {"gradient_error": error, "mode": _mode(context)}


def _loss(params: Any, inputs: Any, labels: Any) -> Any:
    """The Hessian problem's loss: a tanh layer, a linear layer, mean softmax cross-entropy."""
    w1, b1, w2, b2 = params
    logits = tf.tanh(inputs @ w1 + b1) @ w2 + b2
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def higher_order(context: ProbeContext) -> dict[str, Any]:
    """Forward-over-reverse, as TensorFlow's autodiff guide writes a Hessian-vector product: a
    ForwardAccumulator carrying v around the GradientTape that computes the gradient (one forward
    and one backward pass, no Hessian built)."""
    problem = checks.hessian_problem()
    inputs, labels = tf.constant(problem.inputs), tf.constant(problem.labels)

    def hessian_vector(params: tuple[tf.Tensor, ...], vector: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        with tf.autodiff.ForwardAccumulator(params, vector) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = _loss(params, inputs, labels)
            gradient = tape.gradient(loss, params)
        return [accumulator.jvp(part) for part in gradient]

    hvp = _graph(context, hessian_vector)(tuple(tf.constant(p) for p in problem.params),
                                          tuple(tf.constant(v) for v in problem.vector))
    return {"hvp_error": checks.check_hvp(problem, tuple(part.numpy() for part in hvp)),
            "method": "tf.autodiff.ForwardAccumulator over tf.GradientTape", "mode": _mode(context)}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    """One Python while loop on tensors: eagerly TensorFlow runs it as written; under tf.function
    autograph turns it into a tf.while_loop (its condition is a tensor), which XLA compiles for
    tensorflow-xla. The gradient is the tape's through that tf.while_loop, in the same mode."""
    problem = checks.loop_problem()

    def loop(matrix: tf.Tensor, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        steps = tf.constant(0)
        while tf.norm(x) > checks.LOOP_THRESHOLD and steps < checks.LOOP_LIMIT:
            # XLA differentiates a tf.while_loop only with a static bound on its trip count (the
            # backward pass's stacks need a fixed size); eagerly this is a no-op.
            tf.autograph.experimental.set_loop_options(maximum_iterations=checks.LOOP_LIMIT)
            x = tf.tanh(tf.linalg.matvec(matrix, x))
            steps += 1
        return steps, x

    def gradient(matrix: tf.Tensor, x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(matrix)
            _, final = loop(matrix, x)
            value = tf.reduce_sum(weights * final)
        return tape.gradient(value, matrix)

    matrix = tf.constant(problem.matrix)
    modes = {"eager": loop, _mode(context): _graph(context, loop)}
    errors = []
    for mode, function in modes.items():
        answer = [(int(steps), x.numpy()) for steps, x in
                  (function(matrix, tf.constant(start)) for start in problem.starts)]
        errors.append(checks.check_loop(problem, mode, answer))
    answer_gradient = _graph(context, gradient)(matrix, tf.constant(problem.starts[-1]), tf.constant(problem.weights))
    gradient_error = checks.check("the gradient through the loop", answer_gradient.numpy(),
                                  problem.reference_gradient())
    return {"error": max(errors), "modes": ", ".join(modes), "gradient": True, "gradient_error": gradient_error}


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """Without Keras TensorFlow has no LSTM layer of its own (tf.compat.v1.nn.rnn_cell.LSTMCell was
    Keras' and raises "not available with Keras 3" in TF 2.21); its idiom is the cell written in tf
    ops, scanned over time with tf.scan, and a tf.sequence_mask that keeps each sequence's state once
    its length is past (tf.where), as dynamic_rnn's sequence_length did."""
    problem = checks.sequence_problem()
    hidden = problem.hidden

    def last_states(inputs: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
        mask = tf.sequence_mask(lengths, tf.shape(inputs)[1])  # (batch, steps), True inside a sequence
        kernel, recurrent = tf.constant(problem.input_kernel.T), tf.constant(problem.recurrent_kernel.T)

        def step(state: tuple[tf.Tensor, tf.Tensor], slice_: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
            (h, c), (x, inside) = state, slice_
            i, f, g, o = tf.split(x @ kernel + h @ recurrent + problem.bias, 4, axis=1)
            new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            new_h = tf.sigmoid(o) * tf.tanh(new_c)
            inside = inside[:, None]
            return tf.where(inside, new_h, h), tf.where(inside, new_c, c)

        zeros = tf.zeros((tf.shape(inputs)[0], hidden))
        time_major = (tf.transpose(inputs, (1, 0, 2)), tf.transpose(mask))
        states, _ = tf.scan(step, time_major, initializer=(zeros, zeros))
        return states[-1]

    answer = _graph(context, last_states)(tf.constant(problem.inputs), tf.constant(problem.lengths))
    error = checks.check("the final hidden states", answer.numpy(), problem.reference())
    return {"error": error, "method": "tf.scan with tf.sequence_mask", "mode": _mode(context)}


def _mirrored_step(context: ProbeContext, answer: str) -> None:
    """multi-device's child: the CPU split into two logical devices (possible only before TensorFlow's
    runtime starts, hence a process of its own), one step of the Hessian problem's network under
    MirroredStrategy, each device computing loss and gradients on its half of the batch, averaged
    over the devices (equal halves: the whole batch's mean); written to ``answer`` (.npz)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * checks.DEVICES)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(checks.DEVICES)])
    problem = checks.hessian_problem()
    with strategy.scope():
        params = [tf.Variable(value) for value in problem.params]  # one copy per device
    dataset = tf.data.Dataset.from_tensor_slices((problem.inputs, problem.labels)).batch(len(problem.labels))
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))  # the global batch, split in halves

    def loss_and_gradients(values: list[Any], inputs: Any, labels: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = _loss(values, inputs, labels)
        return loss, tape.gradient(loss, values)

    compiled = _graph(context, loss_and_gradients)

    def replica_step(inputs: Any, labels: Any) -> tuple[Any, Any]:
        # An XLA cluster runs on one device and cannot read another device's variable ("Trying to
        # access resource ... located in device CPU:1 from device CPU:0" when the compiled function
        # reads the variables itself): it takes this device's copies as tensors.
        return compiled([param.read_value() for param in params], inputs, labels)  # type: ignore[no-any-return]

    def step(batch: Any) -> Any:
        per_device = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_device, axis=None)

    loss, gradients = tf.function(step)(batch)
    np.savez(answer, loss.numpy(), *(gradient.numpy() for gradient in gradients))


def multi_device(context: ProbeContext) -> dict[str, Any]:
    answer = Path(context.folder) / "mirrored.npz"
    command = [sys.executable, "-m", __name__, context.framework, str(context.threads), context.folder, str(answer)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=MULTI_DEVICE_TIMEOUT_S,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # the last stderr line: the error
    except subprocess.TimeoutExpired:
        message = f"the MirroredStrategy step did not finish within {MULTI_DEVICE_TIMEOUT_S:.0f} s"
        raise checks.ProbeFailure(message) from None
    if done.returncode != 0 or not answer.exists():
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise checks.ProbeFailure(f"the MirroredStrategy step failed: {last}"[:500])
    with np.load(answer) as stored:
        loss, *gradients = (stored[name] for name in stored.files)
    error = checks.check_data_parallel(checks.hessian_problem(), "MirroredStrategy", float(loss), gradients)
    return {"gradient_error": error, "devices": checks.DEVICES, "mode": _mode(context),
            "method": "tf.distribute.MirroredStrategy over two logical CPU devices, strategy.run + reduce(MEAN)"}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------
# The deployable model is a tf.Module holding the checker's module tree and its forward pass as a
# tf.function (compiled by XLA for tensorflow-xla) whose input signature is the batch's exact shape:
# TFLite's converter lowers tf.scan's tensor lists to builtin ops only with a static element shape
# (a None batch fails: "'tf.TensorListReserve' op requires element_shape to be static").


def deployable(checker: Any, inputs: np.ndarray) -> tuple[Any, np.ndarray]:
    from dlarena.frameworks import kernel

    network = checker.model  # tensorflow_native.Model: images NHWC, token ids int32
    native = network.device_batch(kernel.batch_to_framework(inputs, network.conventions)).numpy()
    model = tf.Module()
    model.network = network.root
    model.jit_compile = network.xla
    model.forward = tf.function(lambda inputs: network.root(inputs, False), jit_compile=network.xla,
                                input_signature=[tf.TensorSpec(native.shape, native.dtype)])
    return model, native


def _checkpoint(path: Any, jit_compile: bool) -> str:
    """The checkpoint's prefix in the folder ``path``; its name records how the model runs, which the
    weights alone do not say."""
    return str(Path(path) / ("jit_compile" if jit_compile else "graph"))


def save(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    tf.train.Checkpoint(network=model.network).write(_checkpoint(path, model.jit_compile))
    return "tf.train.Checkpoint"


def load(path: Any, workload: Any) -> Any:
    """The network rebuilt by frameworks/tensorflow_native.py, its variables restored from the checkpoint."""
    from dlarena.frameworks import tensorflow_native

    jit_compile = Path(_checkpoint(path, True) + ".index").exists()
    network = tensorflow_native.Model(workload, "float32", "cpu", 0, False, xla=jit_compile)
    tf.train.Checkpoint(network=network.root).read(_checkpoint(path, jit_compile)).assert_consumed()
    return lambda inputs: network.logits(network.device_batch(inputs))


def export_onnx(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    import tf2onnx  # type: ignore[import-untyped]

    tf2onnx.convert.from_function(model.forward, input_signature=model.forward.input_signature,
                                  output_path=str(path))
    return f"tf2onnx {tf2onnx.__version__} (convert.from_function)"


def aot_export(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    tf.saved_model.save(model, str(path), signatures=model.forward)
    return "tf.saved_model.save (SavedModel), run through its serving signature"


def aot_load(path: Any, workload: Any) -> Any:
    """The SavedModel's serving signature, as TensorFlow Serving or the C++ API would call it: the
    graph and variables from the files, no Python model code."""
    loaded = tf.saved_model.load(str(path))  # held by the closure: the signature's variables live in it
    return lambda inputs: loaded.signatures["serving_default"](inputs=tf.constant(inputs))["output_0"].numpy()


MOBILE_LOADER = LITERT_LOADER  # the file runs in LiteRT's interpreter, without TensorFlow


def mobile_export(model: Any, native_inputs: np.ndarray, path: Any) -> str:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.forward.get_concrete_function()], model)
    Path(path).write_bytes(converter.convert())  # TFLite builtin ops only: LiteRT's interpreter has no TF ops
    return "LiteRT (tf.lite.TFLiteConverter, builtin ops)"


if __name__ == "__main__":  # multi-device's child: FRAMEWORK THREADS FOLDER ANSWER
    framework, threads, folder, answer = sys.argv[1:]
    _mirrored_step(ProbeContext(framework, int(threads), folder), answer)
