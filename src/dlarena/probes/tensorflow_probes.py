"""TensorFlow's answers to the capability probes: ``tensorflow`` runs each as a ``tf.function`` graph,
``tensorflow-xla`` as ``tf.function(jit_compile=True)``, the framework's own modes (as
frameworks/tensorflow_native.py runs its cells). No Keras: tf ops, tf.GradientTape and tf's control flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext


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
                w1, b1, w2, b2 = params
                logits = tf.tanh(inputs @ w1 + b1) @ w2 + b2
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
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

