"""JAX's answers to the capability probes (``jax``: Flax NNX and Optax, every computation under jax.jit).

Each function solves the problem that probes/checks.py poses in JAX's own idiom (function
transformations over pure functions, lax control flow, nnx.RNN), in float32 (JAX's default), and hands
its answer to the same check as every other framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dlarena.probes import checks
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


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    inputs, labels = jnp.asarray(problem.inputs), jnp.asarray(problem.labels.astype(np.int32))

    def loss(params: tuple[Any, ...]) -> Any:
        w1, b1, w2, b2 = params
        logits = jnp.tanh(inputs @ w1 + b1) @ w2 + b2
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def hessian_vector(params: tuple[Any, ...], vector: tuple[Any, ...]) -> Any:
        return jax.jvp(jax.grad(loss), (params,), (vector,))[1]  # forward-over-reverse: no Hessian built

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
