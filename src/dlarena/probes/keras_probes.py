"""Keras 3's answers to the capability probes (``keras-jax``, ``keras-torch``, ``keras-tensorflow``).

The worker imports this module after frameworks/keras3.py's Backend has set ``KERAS_BACKEND`` and
imported keras, so ``import keras`` here gets the cell's backend. The models are Keras' own (a Layer
subclass over keras.ops, keras.ops.while_loop, keras.layers.LSTM); Keras 3 has no backend-neutral
gradient API (its guides differentiate with the backend's: jax.grad, tf.GradientTape, torch
autograd), so every gradient here is the backend's, and the figures say which. "Compiled" is what
Keras' ``jit_compile="auto"`` picks per backend: jax.jit, tf.function, and eager PyTorch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dlarena.frameworks.base import Unsupported
from dlarena.probes import checks
from dlarena.probes.deployment import LITERT_LOADER
from dlarena.probes.runner import ProbeContext

BACKEND = keras.backend.backend()
COMPILED_MODE = {"jax": "jax.jit", "tensorflow": "tf.function", "torch": "eager"}[BACKEND]
GRADIENT_API = {"jax": "jax.grad", "tensorflow": "tf.GradientTape", "torch": "torch.autograd"}[BACKEND]


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(function)  # type: ignore[no-any-return]
    return function


def _gradient(function: Callable[..., Any], argument: np.ndarray, *rest: np.ndarray) -> np.ndarray:
    """d function(argument, *rest) / d argument, by the backend's reverse mode, compiled as Keras would."""
    if BACKEND == "jax":
        import jax

        return np.asarray(_compiled(jax.grad(function))(argument, *rest))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def taped(x: tf.Tensor, *others: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = function(x, *others)
            return tape.gradient(value, x)

        return np.asarray(_compiled(taped)(tf.constant(argument), *map(tf.constant, rest)))
    import torch

    leaf = torch.tensor(argument, requires_grad=True)
    function(leaf, *map(torch.tensor, rest)).backward()
    assert leaf.grad is not None
    return leaf.grad.numpy()


class ScaledSwish(keras.layers.Layer):  # type: ignore[misc]
    """The new layer in Keras' own terms: a Layer subclass whose call is keras.ops only."""

    def call(self, inputs: Any) -> Any:
        return inputs * keras.ops.sigmoid(checks.ALPHA * inputs)


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()
    layer = ScaledSwish()

    def loss(x: Any, weights: Any) -> Any:
        return keras.ops.sum(weights * layer(x))

    answer = _gradient(loss, problem.x, problem.weights)
    error = checks.check("the gradient of x * sigmoid(1.5 x)", answer, problem.reference_gradient())
    return {"gradient_error": error, "gradient_api": GRADIENT_API, "mode": COMPILED_MODE}


def higher_order(context: ProbeContext) -> dict[str, Any]:
    """The loss in keras.ops; H v by the backend's own second-order autodiff, since Keras has none."""
    problem = checks.hessian_problem()

    def loss(w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
        logits = keras.ops.matmul(keras.ops.tanh(keras.ops.matmul(problem.inputs, w1) + b1), w2) + b2
        return keras.ops.mean(keras.ops.sparse_categorical_crossentropy(problem.labels, logits, from_logits=True))

    if BACKEND == "jax":
        import jax

        def jax_hvp(params: tuple[Any, ...], vector: tuple[Any, ...]) -> Any:
            return jax.jvp(lambda p: jax.grad(lambda q: loss(*q))(p), (params,), (vector,))[1]

        hvp, method = _compiled(jax_hvp)(problem.params, problem.vector), "jax.jvp(jax.grad)"
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def tf_hvp(params: tuple[tf.Tensor, ...], vector: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
            with tf.autodiff.ForwardAccumulator(params, vector) as accumulator:
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    value = loss(*params)
                gradient = tape.gradient(value, params)  # inside the accumulator, which carries v through it
            return [accumulator.jvp(part) for part in gradient]

        hvp = _compiled(tf_hvp)(tuple(map(tf.constant, problem.params)), tuple(map(tf.constant, problem.vector)))
        method = "tf.autodiff.ForwardAccumulator over tf.GradientTape"
    else:
        import torch

        # reverse over reverse: the gradient kept differentiable, then the gradient of its dot with v
        params = tuple(torch.tensor(p, requires_grad=True) for p in problem.params)
        gradient = torch.autograd.grad(loss(*params), params, create_graph=True)
        dot = torch.stack([(g * torch.tensor(v)).sum() for g, v in zip(gradient, problem.vector, strict=True)]).sum()
        hvp, method = torch.autograd.grad(dot, params), "torch.autograd.grad twice (create_graph=True)"
    answer = tuple(np.asarray(keras.ops.convert_to_numpy(part)) for part in hvp)
    return {"hvp_error": checks.check_hvp(problem, answer), "method": method, "backend_neutral": False}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    """keras.ops.while_loop: lax.while_loop under JAX, tf.while_loop under TensorFlow, a Python loop
    under PyTorch; run as called and compiled (jax.jit, tf.function; PyTorch has no compiled mode
    under Keras' "auto")."""
    problem = checks.loop_problem()

    def loop(matrix: Any, x: Any) -> tuple[Any, Any]:
        return keras.ops.while_loop(  # type: ignore[no-any-return]
            lambda steps, x: keras.ops.norm(x) > checks.LOOP_THRESHOLD,
            lambda steps, x: (steps + 1, keras.ops.tanh(keras.ops.matmul(matrix, x))),
            (keras.ops.convert_to_tensor(0), x), maximum_iterations=checks.LOOP_LIMIT)  # XLA's gradient needs the bound

    modes = {"eager": loop} | ({} if BACKEND == "torch" else {COMPILED_MODE: _compiled(loop)})
    errors = []
    for mode, function in modes.items():
        answer = [(int(keras.ops.convert_to_numpy(steps)), keras.ops.convert_to_numpy(x)) for steps, x in
                  (function(problem.matrix, keras.ops.convert_to_tensor(start)) for start in problem.starts)]
        errors.append(checks.check_loop(problem, mode, answer))

    def value(matrix: Any, start: Any, weights: Any) -> Any:
        return keras.ops.sum(weights * loop(matrix, start)[1])

    figures: dict[str, Any] = {"error": max(errors), "modes": ", ".join(modes), "gradient": True}
    if BACKEND == "jax":
        import jax

        # jax.grad through lax.while_loop raises (reverse mode needs the trip count); forward mode works
        answer_gradient = np.asarray(_compiled(jax.jacfwd(value))(problem.matrix, problem.starts[-1], problem.weights))
        figures.update(gradient_api="jax.jacfwd", gradient_note="reverse mode (jax.grad) through lax.while_loop is not"
                       " supported; the gradient is forward mode")
    else:
        answer_gradient = _gradient(value, problem.matrix, problem.starts[-1], problem.weights)
        figures["gradient_api"] = GRADIENT_API
    figures["gradient_error"] = checks.check("the gradient through the loop", answer_gradient,
                                             problem.reference_gradient())
    return figures


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """keras.layers.LSTM given the lengths as its ``mask`` argument (a masked step keeps the state).
    keras.layers.Masking would infer the same mask from the all-zero padding, but would also mask a
    real all-zero step; the mask argument says the lengths."""
    problem = checks.sequence_problem()
    steps = problem.inputs.shape[1]
    lstm = keras.layers.LSTM(problem.hidden, return_state=True)
    lstm.build(problem.inputs.shape)
    # PyTorch's (4H, in) gates i, f, g, o -> Keras' (in, 4H) gates i, f, c, o: the same order, transposed
    lstm.set_weights([problem.input_kernel.T, problem.recurrent_kernel.T, problem.bias])
    mask = np.arange(steps)[None, :] < problem.lengths[:, None]
    _, hidden, _ = lstm(problem.inputs, mask=mask)
    error = checks.check("the final hidden states", keras.ops.convert_to_numpy(hidden), problem.reference())
    return {"error": error, "method": "keras.layers.LSTM(mask=...)"}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------
# Every route is Keras' own: model.save and keras.saving.load_model, and model.export, which picks
# the exporter per backend (ONNX: tf2onnx, jax2onnx or torch.onnx; SavedModel: tf.function, jax2tf
# or torch_xla; LiteRT: the TFLite converter or litert_torch).

KERAS_FILE = "model.keras"  # model.save and export(format="litert") want these endings: written
LITERT_FILE = "model.tflite"  # inside the folder the probe names
ONNX_EXPORTER = {"jax": "jax2onnx", "tensorflow": "tf2onnx", "torch": "torch.onnx"}[BACKEND]


def deployable(checker: Any, inputs: np.ndarray) -> tuple[Any, np.ndarray]:
    """The checker's keras.Model, fed images channels-last and token ids as int32, as it was built."""
    from dlarena.frameworks.kernel import batch_to_framework

    native = batch_to_framework(inputs, checker.model.conventions)
    return checker.model.model, native.astype(np.int32 if native.dtype.kind in "iu" else np.float32)


def save(model: Any, native_inputs: np.ndarray, path: Path) -> str:
    path.mkdir()
    model.save(path / KERAS_FILE)
    return f"model.save (.keras) on {BACKEND}"


def load(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """keras.saving.load_model, in the backend the worker set (KERAS_BACKEND is inherited); without
    the compiled loss (dlarena's own class), which inference does not need."""
    from dlarena.frameworks.keras3 import _neg_inf_padding_class

    custom = {"NegInfPadding2D": _neg_inf_padding_class()}  # the one layer keras3.py writes itself
    model = keras.saving.load_model(Path(path) / KERAS_FILE, custom_objects=custom, compile=False)
    return lambda inputs: np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))


def _export(model: Any, native_inputs: np.ndarray, path: Path, format: str, static: bool = False,
            **options: Any) -> None:
    """model.export, given the input signature: the checker's model was never called under JAX (it
    runs stateless_call), and Keras infers a signature only from a call. The batch stays free, except
    where a shape must be fixed: the torch backend's exports (Keras would make None a 1) and LiteRT's."""
    batch = native_inputs.shape[0] if static or BACKEND == "torch" else None
    signature = [keras.InputSpec(shape=(batch, *native_inputs.shape[1:]), dtype=str(native_inputs.dtype))]
    try:
        model.export(str(path), format=format, verbose=False, input_signature=signature, **options)
    except ImportError as error:  # the package Keras exports with on this backend is not installed
        first = str(error).split(". ")[0].replace("\n", " ")  # Keras' sentence naming the package
        raise Unsupported(f"Keras' export(format={format!r}) on the {BACKEND} backend needs a package that is not"
                          f" installed: {first}.") from None


def export_onnx(model: Any, native_inputs: np.ndarray, path: Path) -> str:
    _export(model, native_inputs, path, "onnx")
    return f"model.export(format='onnx'): {ONNX_EXPORTER}"


def aot_export(model: Any, native_inputs: np.ndarray, path: Path) -> str:
    if BACKEND == "torch":
        raise Unsupported(TORCH_UNSUPPORTED["aot-export"])
    _export(model, native_inputs, path, "tf_saved_model")
    return f"model.export(format='tf_saved_model') from {BACKEND}"


def aot_load(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The SavedModel's ``serve`` endpoint, as Keras' export documents: TensorFlow runs it, the
    model's Python code is not needed."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: its functions need its variables alive
    return lambda inputs: np.asarray(loaded.serve(tf.constant(inputs)))


MOBILE_LOADER = LITERT_LOADER  # LiteRT's interpreter runs the file, with no Keras or backend imported
# What Keras' exports need on the torch backend, and why this machine cannot have it.
TORCH_UNSUPPORTED = {
    "aot-export": "Keras' export(format='tf_saved_model') on the torch backend needs torch_xla, whose newest"
                  " release (2.9.0) is built for torch 2.9, not the torch 2.13 dlarena pins",
    "mobile": "Keras' export(format='litert') on the torch backend needs litert-torch, whose releases on PyPI"
              " need torch below 2.13 (0.9.3: torch<2.13.0), not the torch 2.13 dlarena pins",
}


def mobile_export(model: Any, native_inputs: np.ndarray, path: Path) -> str:
    """LiteRT with the batch's shape fixed, as on a device: with a free batch TensorFlow's converter
    keeps an LSTM's TensorList ops as Select TF ops, which the LiteRT interpreter of ai-edge-litert
    cannot run; fixed, it lowers them to LiteRT's builtins. Builtins only, so that a model the
    interpreter cannot run fails here, not on the device."""
    if BACKEND == "torch":
        raise Unsupported(TORCH_UNSUPPORTED["mobile"])
    path.mkdir()
    import tensorflow as tf

    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if BACKEND == "tensorflow":
        _export(model, native_inputs, path / LITERT_FILE, "litert", static=True,
                target_spec={"supported_ops": builtins})
        return "model.export(format='litert')"
    # Keras' LiteRT export wants the TensorFlow or torch backend; from JAX, its SavedModel (jax2tf)
    # goes through TensorFlow's own converter. is_static: the weights become constants (as LiteRT
    # freezes them anyway) and the dropout's uint32 seed state, which LiteRT cannot hold, goes.
    with tempfile.TemporaryDirectory() as saved:
        _export(model, native_inputs, Path(saved), "tf_saved_model", static=True, is_static=True)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = builtins
        (path / LITERT_FILE).write_bytes(converter.convert())
    return "model.export(format='tf_saved_model', is_static=True) + tf.lite.TFLiteConverter.from_saved_model"


# --- multi-device ------------------------------------------------------------------------------------
# One data-parallel step of the Hessian problem's network, the way Keras' guides on distributed
# training do it per backend. Devices are set before the backend starts, so each step runs in a
# child process (``python -m dlarena.probes.keras_probes FOLDER RANK``), which writes its answer.

MULTI_DEVICE_METHOD = {
    "jax": "keras.distribution.DataParallel over two JAX CPU devices (jax.jit of jax.value_and_grad)",
    "tensorflow": "tf.distribute.MirroredStrategy over two logical CPU devices (replica gradients all-reduced)",
    "torch": "torch DistributedDataParallel around the Keras model, two processes over gloo",
}[BACKEND]
# A child imports its backend (TensorFlow about 5 s here) and compiles one step.
MULTI_DEVICE_TIMEOUT_S = 240.0
ANSWER_FILE = "multi_device.npz"
PARAMETERS = ("w1", "b1", "w2", "b2")


def _hessian_model(problem: checks.HessianProblem) -> Any:
    """The Hessian problem's tanh MLP as Keras layers, holding its parameters (kernels are (in, out))."""
    w1, _, w2, _ = problem.params
    model = keras.Sequential([keras.Input((w1.shape[0],)), keras.layers.Dense(w1.shape[1], activation="tanh"),
                              keras.layers.Dense(w2.shape[1])])
    model.set_weights(list(problem.params))
    return model


def _cross_entropy(labels: Any, logits: Any) -> Any:
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def _jax_step(problem: checks.HessianProblem, folder: Path, rank: int) -> tuple[Any, list[Any], int]:
    """Keras' DataParallel replicates the variables and shards the batch over the devices; XLA's
    partitioner adds the all-reduce of the mean's gradient."""
    import jax

    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
    keras.distribution.set_distribution(distribution)
    model = _hessian_model(problem)
    x, y = (keras.distribution.distribute_tensor(array, distribution.get_data_layout(array.shape))
            for array in (problem.inputs, problem.labels.astype(np.int32)))

    def loss_of(trainable: list[Any], x: Any, y: Any) -> Any:
        return keras.ops.mean(_cross_entropy(y, model.stateless_call(trainable, [], x)[0]))

    loss, gradients = jax.jit(jax.value_and_grad(loss_of))([v.value for v in model.trainable_variables], x, y)
    return loss, gradients, len(x.sharding.device_set)


def _tensorflow_step(problem: checks.HessianProblem, folder: Path, rank: int) -> tuple[Any, list[Any], int]:
    """The Keras model built in the strategy's scope (mirrored variables); each replica's loss is its
    half's summed cross-entropy over the global batch (tf.nn.compute_average_loss), and the replicas'
    gradients are summed, as optimizer.apply_gradients would."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * checks.DEVICES)
    strategy = tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        model = _hessian_model(problem)
    batch = len(problem.labels)
    dataset = tf.data.Dataset.from_tensor_slices((problem.inputs, problem.labels)).batch(batch)

    @tf.function  # type: ignore[untyped-decorator]
    def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(_cross_entropy(y, model(x)), global_batch_size=batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        return loss, tf.distribute.get_replica_context().all_reduce("sum", gradients)

    losses, gradients = strategy.run(step, args=next(iter(strategy.experimental_distribute_dataset(dataset))))
    loss = strategy.reduce("sum", losses, axis=None)
    return loss, [strategy.experimental_local_results(g)[0] for g in gradients], strategy.num_replicas_in_sync


def _torch_step(problem: checks.HessianProblem, folder: Path, rank: int) -> tuple[Any, list[Any], int]:
    """One process per device with its half of the batch; DDP averages the gradients over gloo in the
    backward pass, and the halves' mean losses are averaged by an all-reduce."""
    import torch

    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                                         world_size=checks.DEVICES)
    try:
        model = _hessian_model(problem)
        half = np.array_split(np.arange(len(problem.labels)), checks.DEVICES)[rank]
        parallel = torch.nn.parallel.DistributedDataParallel(model)
        loss = keras.ops.mean(_cross_entropy(torch.tensor(problem.labels[half]),
                                             parallel(torch.tensor(problem.inputs[half]))))
        loss.backward()
        total = loss.detach().clone()
        torch.distributed.all_reduce(total)
        return total / checks.DEVICES, [w.value.grad for w in model.trainable_weights], \
            torch.distributed.get_world_size()
    finally:
        torch.distributed.destroy_process_group()


def _data_parallel_child(folder: Path, rank: int) -> None:
    problem = checks.hessian_problem()
    step = {"jax": _jax_step, "tensorflow": _tensorflow_step, "torch": _torch_step}[BACKEND]
    loss, gradients, devices = step(problem, folder, rank)
    if rank == 0:
        numpy = {name: keras.ops.convert_to_numpy(value) for name, value in zip(PARAMETERS, gradients, strict=True)}
        np.savez(folder / ANSWER_FILE, loss=keras.ops.convert_to_numpy(loss), devices=devices, **numpy)


def multi_device(context: ProbeContext) -> dict[str, Any]:
    folder = Path(context.folder)
    # JAX's CPU devices are fixed when it starts: its child asks for two.
    environment = os.environ | ({"JAX_NUM_CPU_DEVICES": str(checks.DEVICES)} if BACKEND == "jax" else {})
    ranks = range(checks.DEVICES if BACKEND == "torch" else 1)  # torch: one process per device
    # Each child's stderr goes to a file, not a pipe: with pipes read one child at a time, a child that
    # filled its pipe with warnings would block, and its peer with it in their all-reduce.
    logs = [folder / f"child-{rank}.stderr" for rank in ranks]
    children = []
    for rank, log in zip(ranks, logs, strict=True):
        with log.open("w") as stderr:
            children.append(subprocess.Popen([sys.executable, "-m", __name__, str(folder), str(rank)],
                                             env=environment, stdout=subprocess.DEVNULL, stderr=stderr))
    for child, log in zip(children, logs, strict=True):
        try:
            child.wait(timeout=MULTI_DEVICE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            limit = f"{MULTI_DEVICE_TIMEOUT_S:.0f} s"
            raise checks.ProbeFailure(f"a data-parallel child did not finish within {limit}") from None
        if child.returncode != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            last = (lines or [f"exit status {child.returncode}"])[-1]
            raise checks.ProbeFailure(f"a data-parallel child failed: {last}"[:500])
    with np.load(folder / ANSWER_FILE) as answer:
        loss, gradients, devices = float(answer["loss"]), [answer[name] for name in PARAMETERS], int(answer["devices"])
    if devices != checks.DEVICES:
        raise checks.ProbeFailure(f"the step ran on {devices} devices, not {checks.DEVICES}")
    error = checks.check_data_parallel(checks.hessian_problem(), MULTI_DEVICE_METHOD, loss, gradients)
    return {"gradient_error": error, "devices": devices, "method": MULTI_DEVICE_METHOD}


if __name__ == "__main__":  # a multi-device child
    _data_parallel_child(Path(sys.argv[1]), int(sys.argv[2]))
