"""JAX's answers to the capability probes (``jax``: Flax NNX and Optax, every computation under jax.jit).

Each function solves the problem that probes/checks.py poses in JAX's own idiom (function
transformations over pure functions, lax control flow, nnx.RNN), in float32 (JAX's default), and hands
its answer to the same check as every other framework. Deployed, a model is the checker's NNX module:
its state in an Orbax checkpoint, its forward pass as StableHLO (jax.export) and, through jax2tf, as
a LiteRT file; two devices are two host CPU devices of a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlarena.frameworks import flax_nnx, kernel
from dlarena.probes import checks
from dlarena.probes.deployment import LITERT_LOADER
from dlarena.probes.runner import ProbeContext


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()

    def activation(x: Any) -> Any:  # the new layer: a plain function of jax.numpy ops
        return x * jax.nn.sigmoid(checks.ALPHA * x)

    def loss(x: Any, weights: Any) -> Any:
        return jnp.sum(weights * activation(x))

    gradient = jax.jit(jax.grad(loss))(jnp.asarray(problem.x), jnp.asarray(problem.weights))
    error = checks.check("the gradient of x * sigmoid(1.5 x)", np.asarray(gradient), problem.reference_gradient())
    return {"gradient_error": error, "mode": "jax.jit(jax.grad)"}


def _mlp_loss(params: tuple[Any, ...], inputs: Any, labels: Any) -> Any:
    """The Hessian problem's loss: a tanh MLP's mean softmax cross-entropy."""
    w1, b1, w2, b2 = params
    logits = jnp.tanh(inputs @ w1 + b1) @ w2 + b2
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    inputs, labels = jnp.asarray(problem.inputs), jnp.asarray(problem.labels.astype(np.int32))

    @jax.jit
    def hessian_vector(params: tuple[Any, ...], vector: tuple[Any, ...]) -> Any:
        gradient = jax.grad(_mlp_loss)
        return jax.jvp(lambda p: gradient(p, inputs, labels), (params,), (vector,))[1]  # no Hessian built

    hvp = hessian_vector(tuple(jnp.asarray(p) for p in problem.params), tuple(jnp.asarray(v) for v in problem.vector))
    return {"hvp_error": checks.check_hvp(problem, tuple(np.asarray(part) for part in hvp)),
            "method": "jax.jvp(jax.grad)"}


def _eager_loop(matrix: Any, x: Any) -> tuple[int, Any]:
    """The loop as Python runs it: each condition is a concrete value, so jax.grad traces through it."""
    steps = 0
    while bool(jnp.linalg.norm(x) > checks.LOOP_THRESHOLD) and steps < checks.LOOP_LIMIT:
        x = jnp.tanh(matrix @ x)
        steps += 1
    return steps, x


@jax.jit
def _compiled_loop(matrix: Any, x: Any) -> tuple[Any, Any]:
    """The loop under jit: a traced condition cannot drive Python's while, so lax.while_loop carries it."""
    def running(state: tuple[Any, Any]) -> Any:
        steps, x = state
        return (jnp.linalg.norm(x) > checks.LOOP_THRESHOLD) & (steps < checks.LOOP_LIMIT)

    def step(state: tuple[Any, Any]) -> tuple[Any, Any]:
        steps, x = state
        return steps + 1, jnp.tanh(matrix @ x)

    return jax.lax.while_loop(running, step, (jnp.zeros((), jnp.int32), x))


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    problem = checks.loop_problem()
    matrix, start, weights = (jnp.asarray(a) for a in (problem.matrix, problem.starts[-1], problem.weights))
    modes: dict[str, Callable[[Any, Any], tuple[Any, Any]]] = {"eager": _eager_loop,
                                                                "jax.jit(lax.while_loop)": _compiled_loop}
    errors = [checks.check_loop(problem, mode, [(int(steps), np.asarray(x)) for steps, x in
                                                (function(matrix, jnp.asarray(s)) for s in problem.starts)])
              for mode, function in modes.items()]
    reference = problem.reference_gradient()
    # Reverse mode through the eager loop (jax.grad records the steps Python took) ...
    eager = jax.grad(lambda m: weights @ _eager_loop(m, start)[1])(matrix)
    # ... but lax.while_loop has no reverse-mode rule (its step count is unknown when tracing, so there
    # is no tape to keep): the compiled loop is differentiated in forward mode, one jvp per entry of A.
    compiled = jax.jit(jax.jacfwd(lambda m: weights @ _compiled_loop(m, start)[1]))(matrix)
    gradient_error = max(checks.check("the gradient through the eager loop (jax.grad)", np.asarray(eager), reference),
                         checks.check("the gradient through lax.while_loop (jax.jacfwd)", np.asarray(compiled),
                                      reference))
    return {"error": max(errors), "modes": ", ".join(modes), "gradient": True, "gradient_error": gradient_error,
            "gradient_note": "jax.grad through the eager loop; lax.while_loop has no reverse mode, so jax.jacfwd"
                             " through the compiled loop"}


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """nnx.RNN over nnx.LSTMCell with seq_lengths: it keeps every step's carry and returns the one at each
    sequence's own last step, so the padding never reaches the answer."""
    problem = checks.sequence_problem()
    cell = nnx.LSTMCell(problem.inputs.shape[2], problem.hidden, rngs=nnx.Rngs(0))
    # LSTMCell's gates i, f, g, o are one Linear each, (in, out) kernels; only the recurrent ones have a
    # bias, as the problem has one bias per gate.
    inputs_, recurrent, bias = (np.split(a, 4) for a in (problem.input_kernel, problem.recurrent_kernel, problem.bias))
    for index, (x_gate, h_gate) in enumerate(((cell.ii, cell.hi), (cell.if_, cell.hf), (cell.ig, cell.hg),
                                              (cell.io, cell.ho))):
        x_gate.kernel[...] = jnp.asarray(inputs_[index].T)
        h_gate.kernel[...] = jnp.asarray(recurrent[index].T)
        assert h_gate.bias is not None  # use_bias=True on the recurrent side
        h_gate.bias[...] = jnp.asarray(bias[index])
    rnn = nnx.RNN(cell, return_carry=True)

    @nnx.jit
    def final_hidden(rnn: nnx.RNN, inputs: Any, lengths: Any) -> Any:
        (_, hidden), _ = rnn(inputs, seq_lengths=lengths)  # the carry is (c, h)
        return hidden

    hidden = final_hidden(rnn, jnp.asarray(problem.inputs), jnp.asarray(problem.lengths.astype(np.int32)))
    return {"error": checks.check("the final hidden states", np.asarray(hidden), problem.reference()),
            "method": "nnx.RNN(LSTMCell, seq_lengths)"}


# --- multi-device --------------------------------------------------------------------------------

# JAX fixes its host devices when its backend starts, so the two-device step runs in a fresh
# interpreter told so by JAX_NUM_CPU_DEVICES (jax_num_cpu_devices); it imports JAX and compiles one
# small step, seconds here.
DATA_PARALLEL_TIMEOUT_S = 120.0
_DATA_PARALLEL_CHILD = ("import sys; from dlarena.probes.jax_probes import data_parallel_step;"
                        " data_parallel_step(sys.argv[1])")
_PARAMETERS = ("w1", "b1", "w2", "b2")
SHARDED, REPLICATED = P("batch"), P()  # type: ignore[no-untyped-call]  # PartitionSpec is unannotated


def data_parallel_step(answer: str) -> None:
    """In the child: the batch split over the host devices, each device's half through jax.shard_map.
    The mean over devices is taken of the loss, not of the gradients: shard_map's transpose already
    sums a replicated parameter's gradient over the devices, so a pmean of the gradients would give
    the sum of the halves' mean gradients, twice the answer (measured)."""
    problem = checks.hessian_problem()
    mesh = jax.make_mesh((checks.DEVICES,), ("batch",))
    inputs, labels = jax.device_put((problem.inputs, problem.labels.astype(np.int32)), NamedSharding(mesh, SHARDED))

    def global_loss(params: tuple[Any, ...], inputs: Any, labels: Any) -> Any:
        return jax.lax.pmean(_mlp_loss(params, inputs, labels), "batch")  # type: ignore[no-untyped-call]

    @jax.jit
    @partial(jax.shard_map, mesh=mesh, in_specs=(REPLICATED, SHARDED, SHARDED), out_specs=REPLICATED)
    def step(params: tuple[Any, ...], inputs: Any, labels: Any) -> Any:
        return jax.value_and_grad(global_loss)(params, inputs, labels)

    loss, gradients = step(tuple(jnp.asarray(p) for p in problem.params), inputs, labels)
    arrays: dict[str, Any] = dict(zip(_PARAMETERS, gradients, strict=True))
    np.savez(answer, loss=loss, devices=len(inputs.sharding.device_set), **arrays)


def multi_device(context: ProbeContext) -> dict[str, Any]:
    answer = Path(context.folder) / "data_parallel.npz"
    environment = {**os.environ, "JAX_NUM_CPU_DEVICES": str(checks.DEVICES)}
    try:
        done = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_CHILD, str(answer)], capture_output=True,
                              text=True, timeout=DATA_PARALLEL_TIMEOUT_S, env=environment)
    except subprocess.TimeoutExpired:
        raise checks.ProbeFailure(f"the two-device step took over {DATA_PARALLEL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not answer.exists():
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise checks.ProbeFailure(f"the two-device step failed: {last}"[:500])
    method = "jax.jit(jax.shard_map) over two host CPU devices, the loss averaged by lax.pmean"
    with np.load(answer) as saved:
        devices = int(saved["devices"])
        if devices != checks.DEVICES:
            raise checks.ProbeFailure(f"the batch was spread over {devices} devices, not {checks.DEVICES}")
        error = checks.check_data_parallel(checks.hessian_problem(), method, float(saved["loss"]),
                                           [saved[name] for name in _PARAMETERS])
    return {"gradient_error": error, "devices": devices, "method": method}


# --- the deployment probes' hooks (probes/deployment.py) ------------------------------------------

UNSUPPORTED = {
    "export-onnx": "jax2onnx 0.13.0 converts the LSTM (its lax.scan) but not the CNN: its nnx.Conv shim binds an"
                   " explicit padding as a list, which JAX 0.10 rejects as an unhashable primitive parameter, its"
                   " nnx.max_pool shim takes no positional arguments, and on the traced program (make_jaxpr) a"
                   " 2-D max pool becomes a 4-D ONNX MaxPool that ONNX Runtime rejects; the other route, jax2tf"
                   " and tf2onnx, fails because jax2tf now emits one XlaCallModule op, which tf2onnx cannot convert",
}


def _module(model: flax_nnx.Model) -> nnx.Module:
    """The Flax NNX module a flax_nnx Model runs, holding (not copying) its current state."""
    module: nnx.Module = nnx.merge(model.graphdef, list(model.leaves))
    return module


def _serve(module: nnx.Module) -> Callable[[np.ndarray], np.ndarray]:
    forward = nnx.jit(lambda module, inputs: module(inputs))
    return lambda inputs: np.asarray(forward(module, inputs))


def deployable(checker: Any, inputs: np.ndarray) -> tuple[nnx.Module, np.ndarray]:
    """The checker's NNX module, and the batch as it takes it (NHWC images, int32 token ids)."""
    model: flax_nnx.Model = checker.model
    return _module(model), np.asarray(model.device_batch(kernel.batch_to_framework(inputs, model.conventions)))


def _checkpointer() -> Any:
    """Orbax, as Flax's checkpointing guide saves NNX models: imported here, not at the top, since the
    other probes need none of its 1.2 s import."""
    import orbax.checkpoint as ocp  # type: ignore[import-untyped]

    return ocp.StandardCheckpointer()


def save(model: nnx.Module, native_inputs: np.ndarray, path: Path) -> str:
    """The module's nnx.State in an Orbax checkpoint (a folder)."""
    with _checkpointer() as checkpointer:  # leaving waits for the asynchronous write
        checkpointer.save(Path(path).absolute(), nnx.state(model))
    return "Orbax StandardCheckpointer (nnx.State)"


def load(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The network rebuilt by flax_nnx (the code a checkpoint needs), its state restored from the checkpoint."""
    module = _module(flax_nnx.Model(workload, "float32", "cpu", 0, training=False))
    with _checkpointer() as checkpointer:
        nnx.update(module, checkpointer.restore(Path(path).absolute(), nnx.state(module)))
    return _serve(module)


def aot_export(model: nnx.Module, native_inputs: np.ndarray, path: Path) -> str:
    """StableHLO of the jitted forward pass with the weights as constants, for any batch size."""
    exported = jax.export.export(jax.jit(lambda inputs: model(inputs)))(
        *jax.export.symbolic_args_specs((native_inputs,), "b, ..."))
    Path(path).write_bytes(exported.serialize())
    return "jax.export (StableHLO, symbolic batch), serialized"


def aot_load(path: Path, workload: Any) -> Callable[[np.ndarray], np.ndarray]:
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    return lambda inputs: np.asarray(exported.call(inputs))  # type: ignore[no-untyped-call]


MOBILE_LOADER = LITERT_LOADER  # the file runs in LiteRT's interpreter, without JAX or TensorFlow


def mobile_export(model: nnx.Module, native_inputs: np.ndarray, path: Path) -> str:
    """LiteRT's route for JAX: jax2tf to a tf.function (its StableHLO in one XlaCallModule op), converted
    by TensorFlow's TFLiteConverter into a .tflite flatbuffer."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    serving = tf.function(jax2tf.convert(model, with_gradient=False), autograph=False,
                          input_signature=[tf.TensorSpec(native_inputs.shape, native_inputs.dtype)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serving.get_concrete_function()], serving)
    Path(path).write_bytes(converter.convert())
    return "jax2tf + tf.lite.TFLiteConverter, run by LiteRT"
