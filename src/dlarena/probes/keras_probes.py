"""Keras 3's answers to the capability probes (``keras-jax``, ``keras-torch``, ``keras-tensorflow``).

The worker imports this module after frameworks/keras3.py's Backend has set ``KERAS_BACKEND`` and
imported keras, so ``import keras`` here gets the cell's backend. The models are Keras' own (a Layer
subclass over keras.ops, keras.ops.while_loop, keras.layers.LSTM); Keras 3 has no backend-neutral
gradient API (its guides differentiate with the backend's: jax.grad, tf.GradientTape, torch
autograd), so every gradient here is the backend's, and the figures say which. "Compiled" is what
Keras' ``jit_compile="auto"`` picks per backend: jax.jit, tf.function, and eager PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from dlarena.probes import checks
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
