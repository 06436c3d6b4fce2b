"""PyTorch's answers to the capability probes (``torch``, and ``torch-compile`` through torch.compile).

Each function solves the problem that probes/checks.py poses, in PyTorch's own API, and hands its
answer to the same check as every other framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dlarena.probes import checks
from dlarena.probes.runner import ProbeContext


def _compiled(context: ProbeContext, function: Callable[..., Any]) -> Callable[..., Any]:
    """The function as the framework asked runs it: through torch.compile for torch-compile."""
    if context.framework == "torch-compile":
        return torch.compile(function)
    return function


def custom_layer(context: ProbeContext) -> dict[str, Any]:
    problem = checks.custom_layer_problem()

    def activation(x: torch.Tensor) -> torch.Tensor:  # the new layer, from PyTorch's own ops
        return x * torch.sigmoid(checks.ALPHA * x)

    def loss(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights * activation(x)).sum()

    x = torch.tensor(problem.x, requires_grad=True)
    _compiled(context, loss)(x, torch.tensor(problem.weights)).backward()
    assert x.grad is not None
    error = checks.check("the gradient of x * sigmoid(1.5 x)", x.grad.numpy(), problem.reference_gradient())
    return {"gradient_error": error, "mode": "torch.compile" if context.framework == "torch-compile" else "eager"}


def higher_order(context: ProbeContext) -> dict[str, Any]:
    problem = checks.hessian_problem()
    inputs, labels = torch.tensor(problem.inputs), torch.tensor(problem.labels)

    def loss(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        logits = torch.tanh(inputs @ w1 + b1) @ w2 + b2
        return torch.nn.functional.cross_entropy(logits, labels)

    params = tuple(torch.tensor(p) for p in problem.params)
    vector = tuple(torch.tensor(v) for v in problem.vector)
    def hessian_vector(params: tuple[torch.Tensor, ...], vector: tuple[torch.Tensor, ...]) -> Any:
        # forward-over-reverse through torch.func
        return torch.func.jvp(lambda *p: torch.func.grad(loss, argnums=(0, 1, 2, 3))(*p), params, vector)[1]

    hvp = _compiled(context, hessian_vector)(params, vector)
    answer = tuple(np.asarray(part.detach().numpy()) for part in hvp)
    return {"hvp_error": checks.check_hvp(problem, answer), "method": "torch.func.jvp(grad)"}


def dynamic_loop(context: ProbeContext) -> dict[str, Any]:
    """A Python while loop on tensors: eager PyTorch runs it as written; torch.compile traces through
    it (the data-dependent condition breaks the graph and recompiles per step count)."""
    problem = checks.loop_problem()

    def loop(matrix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.zeros((), dtype=torch.int64)
        while bool(torch.linalg.vector_norm(x) > checks.LOOP_THRESHOLD) and int(steps) < checks.LOOP_LIMIT:
            x = torch.tanh(matrix @ x)
            steps = steps + 1
        return steps, x

    matrix = torch.tensor(problem.matrix)
    figures: dict[str, Any] = {}
    modes = {"eager": loop}
    if context.framework == "torch-compile":
        modes["torch.compile"] = torch.compile(loop)
    errors = []
    for mode, function in modes.items():
        answer = [(int(steps), x.detach().numpy()) for steps, x in
                  (function(matrix, torch.tensor(start)) for start in problem.starts)]
        errors.append(checks.check_loop(problem, mode, answer))
    leaf = torch.tensor(problem.matrix, requires_grad=True)
    _, final = modes[list(modes)[-1]](leaf, torch.tensor(problem.starts[-1]))
    (torch.tensor(problem.weights) * final).sum().backward()  # type: ignore[no-untyped-call]
    assert leaf.grad is not None
    figures["gradient_error"] = checks.check("the gradient through the loop", leaf.grad.numpy(),
                                             problem.reference_gradient())
    figures.update(error=max(errors), modes=", ".join(modes), gradient=True)
    return figures


def variable_length(context: ProbeContext) -> dict[str, Any]:
    """torch.nn.LSTM over a packed batch (pack_padded_sequence): its final state is each sequence's own."""
    problem = checks.sequence_problem()
    lstm = torch.nn.LSTM(problem.inputs.shape[2], problem.hidden, batch_first=True)
    values = {"weight_ih_l0": problem.input_kernel, "weight_hh_l0": problem.recurrent_kernel,
              "bias_ih_l0": problem.bias, "bias_hh_l0": np.zeros_like(problem.bias)}  # one bias per gate
    with torch.no_grad():
        for name, value in values.items():
            getattr(lstm, name).copy_(torch.tensor(value))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(problem.inputs), torch.tensor(problem.lengths),
                                                     batch_first=True, enforce_sorted=False)
    function = torch.compile(lstm) if context.framework == "torch-compile" else lstm
    _, (hidden, _) = function(packed)
    error = checks.check("the final hidden states", hidden[0].detach().numpy(), problem.reference())
    return {"error": error, "method": "pack_padded_sequence"}
